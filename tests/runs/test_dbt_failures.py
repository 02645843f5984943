"""A failed dbt test is kept with the run: its node, dbt's message, how many rows it found and a sample of them."""

from __future__ import annotations

import contextlib
from pathlib import Path

from helpers import CUSTOMERS, csv_records, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.dbt.runner import SAMPLE_ROWS, SAMPLE_VALUE_CHARS, sample_failing_rows
from loader.runs.registry import ensure_registry
from loader.runs.reports import DbtFailure, dbt_failures

# The manifest's count of customers as the registry hands it to dbt, inflated by a trigger: the ledger then
# cannot reconcile, which is what dbt's test assert_ledger_reconciles is there to catch.
INFLATED_BY = 1000


def miscount_customers(db: Warehouse) -> None:
    ensure_registry(db)
    query(db, "create function loader_registry.miscount() returns trigger language plpgsql as $$"
              f" begin new.manifest_rows := new.manifest_rows + {INFLATED_BY}; return new; end; $$")
    query(db, "create trigger miscount before insert on loader_registry.run_files for each row"
              " when (new.entity = 'customers') execute function loader_registry.miscount()")


def failures_of(db: Warehouse, run_id: object) -> list[DbtFailure]:
    with contextlib.closing(db.connect()) as conn:
        return dbt_failures(conn, int(str(run_id)))


def test_a_failed_dbt_test_is_kept_with_its_failing_rows(db: Warehouse, tmp_path: Path, capsys) -> None:
    miscount_customers(db)
    assert main(["run", str(make_load(tmp_path))]) == 1
    assert "assert_ledger_reconciles" in capsys.readouterr().out
    [(run_id, status, message)] = query(db, "select run_id, status, message from loader_registry.runs")
    assert status == "failed" and "assert_ledger_reconciles: fail" in message

    customers = csv_records(CUSTOMERS)
    [failure] = failures_of(db, run_id)
    assert (failure.node, failure.status, failure.failing_rows) == ("assert_ledger_reconciles", "fail", 1)
    assert "1 result" in failure.message
    assert failure.sample_note is None
    # The test's own columns, in its select's order, and the one entity that breaks the ledger.
    assert failure.sample_columns == ["entity", "manifest_rows", "landed_rows", "valid_rows", "rejected_rows",
                                      "inserted", "updated", "unchanged"]
    assert failure.sample == [{"entity": "customers", "manifest_rows": customers + INFLATED_BY,
                               "landed_rows": customers, "valid_rows": customers, "rejected_rows": 0,
                               "inserted": customers, "updated": 0, "unchanged": 0}]
    assert failure.sample is not None and list(failure.sample[0]) == failure.sample_columns

    # Run again once the count is right: this attempt's record replaces the failed one's.
    query(db, "drop trigger miscount on loader_registry.run_files")
    query(db, "update loader_registry.run_files set manifest_rows = manifest_rows - %s where run_id = %s"
              " and entity = 'customers'", (INFLATED_BY, run_id))
    assert main(["rerun", "acme/shop-1/load-1"]) == 0
    assert query(db, "select status from loader_registry.runs where run_id = %s", (run_id,)) == [("completed",)]
    assert failures_of(db, run_id) == []


def test_a_run_without_a_failed_test_keeps_no_dbt_failures(db: Warehouse, tmp_path: Path) -> None:
    assert main(["run", str(make_load(tmp_path))]) == 0
    assert query(db, "select count(*) from loader_registry.run_dbt_failures") == [(0,)]


def test_sample_values_are_cut_short_and_rows_bounded(db: Warehouse) -> None:
    compiled = ("select repeat('x', 500) as long_text, 1.25::numeric as amount, array['a', 'b'] as names,"
                " i, i as i, null::text as nothing, true as flag from generate_series(1, 9) as i -- a trailing comment")
    [(name, sample)] = sample_failing_rows(db, [("wide_test", compiled)]).items()
    assert name == "wide_test" and sample.note is None
    assert sample.columns == ("long_text", "amount", "names", "i", "i_2", "nothing", "flag")
    assert len(sample.rows) == SAMPLE_ROWS
    first = sample.rows[0]
    assert len(first["long_text"]) == SAMPLE_VALUE_CHARS and first["long_text"] == "x" * 199 + "\u2026"
    assert (first["amount"], first["names"], first["nothing"], first["flag"]) == ("1.25", ["a", "b"], None, True)
    assert sorted(r["i"] for r in sample.rows) == sorted(r["i_2"] for r in sample.rows)


def test_a_sample_that_cannot_be_read_says_why(db: Warehouse) -> None:
    samples = sample_failing_rows(db, [("broken", "select * from no_such_table"), ("fine", "select 1 as one")])
    assert samples["broken"].rows == () and samples["broken"].note is not None
    assert 'relation "no_such_table" does not exist' in samples["broken"].note
    # One test's failed query does not cost the next one its sample.
    assert samples["fine"].rows == ({"one": 1},)


def test_a_sample_changes_nothing(db: Warehouse) -> None:
    query(db, "create schema loader_registry; create sequence loader_registry.counter")
    refused = sample_failing_rows(db, [("writes", "select nextval('loader_registry.counter') as n")])["writes"]
    assert refused.rows == () and refused.note is not None and "read-only transaction" in refused.note
    assert query(db, "select last_value, is_called from loader_registry.counter") == [(1, False)]

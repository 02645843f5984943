"""Values and their bounds: every value a partner can write is that row's exception or a stored value, never a failed
load; ids, numbers and e-mails hold exactly what the contract allows; trimming covers every Unicode space.

Each test is a clean small load with one file changed (two where a child must point at the changed parent), run
end to end with `loader run` on a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import make_load, query
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse

REPO = Path(__file__).resolve().parents[2]
BIG_INT = 9223372036854775807


def csv_file(header: str, *rows: str) -> bytes:
    return ("\r\n".join((header, *rows)) + "\r\n").encode()


BASE = {
    "customers.csv": csv_file("external_customer_id,first_name,last_name,email", "C1,Ann,Smith,ann@example.com"),
    "vehicles.csv": csv_file("external_vehicle_id,external_customer_id,vin,year,odometer",
                             "V1,C1,JH4KA7561PC008269,2020,1000"),
    "invoices.csv": csv_file("external_invoice_id,external_customer_id,invoice_number,status,invoice_date,total",
                             "I1,C1,1001,closed,2024-03-15,10.00"),
    "line_items.csv": csv_file("external_dataline_id,external_invoice_id,line_type,quantity,unit_price,line_total",
                               "L1,I1,part,1,10.00,10.00"),
    "payments.csv": csv_file("external_payment_id,external_invoice_id,payment_date,amount,method",
                             "P1,I1,2024-03-16,10.00,cash"),
    "inventory_parts.csv": csv_file("external_part_id,part_number,quantity_on_hand,cost,price",
                                    "IP1,BRK-1,4,5.00,9.00"),
    "suppliers.csv": csv_file("external_supplier_id,name,email", "S1,Parts Co,orders@parts.example"),
}


Exceptions = dict[tuple[str, int, str, str], str]
Load = Callable[[dict[str, bytes]], Exceptions]


@pytest.fixture
def load(db: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Load]:
    """Run a clean load with the given files changed; return its exceptions by (entity, row, field, rule)."""
    # The manifest's independent record count uses Python's csv module, whose default field limit is 128 KiB.
    limit = csv.field_size_limit(1 << 30)

    def run_with(files: dict[str, bytes]) -> Exceptions:
        code = main(["run", str(make_load(tmp_path, {**BASE, **files}))])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        rows = query(db, "select entity, row_number, field, rule, message from analytics_audit.exceptions"
                         " where run_id = (select max(run_id) from loader_registry.runs)")
        return {(e, r, f, rule): message for e, r, f, rule, message in rows}

    yield run_with
    csv.field_size_limit(limit)


def published(db: Warehouse, entity: str, columns: str) -> dict[str, tuple[object, ...]]:
    return {row[0]: row[1:] for row in query(db, f"select external_id, {columns} from prod_sms.{entity}")}


def test_money_and_decimals_too_large_or_too_precise_are_row_exceptions(db: Warehouse, load: Load) -> None:
    huge = "9" * 140_000
    tiny = "0." + "1" * 20_000
    exceptions = load({"line_items.csv": csv_file(
        "external_dataline_id,external_invoice_id,line_type,quantity,unit_price,line_total",
        "L1,I1,part,1,10.00,10.00",
        "L2,I1,part,1,1000000000000.00,10.00",
        f"L3,I1,part,{huge},1.00,1.00",
        f"L4,I1,part,{tiny},1.00,1.00",
        f"L5,I1,part,{'9' * 18}.{'9' * 6},999999999999.99,-999999999999.99",
        f"L6,I1,part,{'1' * 19},1.00,1.00",
        "L7,I1,part,1.1234567,1.00,1.00",
        f"L8,I1,part,1,{huge},{tiny}",
        # Leading zeros are no digits of the value; a 0 before the point is none either.
        f"L9,I1,part,{'0' * 30}1.5,{'0' * 30}12.50,-0.5",
        f"L10,I1,part,-{'0' * 200_000}2,-0,1.00",
    )})
    assert exceptions == {
        ("line_items", 2, "unit_price", "range"): "unit_price must have at most 12 digits before the decimal point",
        ("line_items", 3, "quantity", "range"): "quantity must have at most 18 digits before the decimal point",
        ("line_items", 4, "quantity", "format"): "quantity has more than 6 decimal places",
        ("line_items", 6, "quantity", "range"): "quantity must have at most 18 digits before the decimal point",
        ("line_items", 7, "quantity", "format"): "quantity has more than 6 decimal places",
        ("line_items", 8, "unit_price", "range"): "unit_price must have at most 12 digits before the decimal point",
        ("line_items", 8, "line_total", "format"): "line_total has more than 2 decimal places",
    }
    assert published(db, "line_items", "quantity, unit_price, line_total") == {
        "L1": (Decimal("1"), Decimal("10.00"), Decimal("10.00")),
        "L5": (Decimal("999999999999999999.999999"), Decimal("999999999999.99"), Decimal("-999999999999.99")),
        "L9": (Decimal("1.5"), Decimal("12.50"), Decimal("-0.50")),
        "L10": (Decimal("-2"), Decimal("0.00"), Decimal("1.00")),
    }


def test_a_payment_too_large_for_its_column_is_a_row_exception(db: Warehouse, load: Load) -> None:
    exceptions = load({"payments.csv": csv_file(
        "external_payment_id,external_invoice_id,payment_date,amount,method",
        "P1,I1,2024-03-16,9999999999999.99,cash",
        "P2,I1,2024-03-16,-999999999999.99,cash",
    )})
    assert exceptions == {
        ("payments", 1, "amount", "range"):
            "amount must be non-zero and have at most 12 digits before the decimal point",
    }
    assert published(db, "payments", "amount") == {"P2": (Decimal("-999999999999.99"),)}


def test_production_columns_hold_exactly_the_values_the_contract_accepts(db: Warehouse, load: Load) -> None:
    load({})
    contract = load_contract("sms_v1")
    types = {"int": ("bigint", None, None),
             "decimal": ("numeric", contract.types.decimal.precision, contract.types.decimal.scale),
             "money": ("numeric", contract.types.money.precision, contract.types.money.scale)}
    checked = 0
    for entity in contract.entities:
        for column in entity.columns:
            if column.type not in types:
                continue
            rows = query(db, "select data_type, numeric_precision, numeric_scale from information_schema.columns"
                             " where table_schema = %s and table_name = %s and column_name = %s",
                         ("prod_sms", entity.name, column.name))
            plan = query(db, "select data_type, numeric_precision, numeric_scale from information_schema.columns"
                             " where table_schema = 'analytics_publish' and table_name = %s and column_name = %s",
                         (f"publish_{entity.name}", column.name))
            # The publish plan casts to the production type: a cast that could fail would fail a whole load.
            assert plan == rows, (entity.name, column.name)
            data_type, precision, scale = types[column.type]
            if column.type == "int" and column.max_years_ahead is not None:
                # A year is bounded by its range rule, far inside an integer.
                assert rows[0][0] == "integer" and date.today().year + column.max_years_ahead < 2**31
            elif column.type == "int":
                assert contract.types.int.highest == BIG_INT and rows[0][0] == data_type, (entity.name, column.name)
            else:
                assert rows == [(data_type, precision, scale)], (entity.name, column.name)
            checked += 1
    assert checked == 13


def test_integers_are_64_bit_and_outside_is_range(db: Warehouse, load: Load) -> None:
    exceptions = load({"vehicles.csv": csv_file(
        "external_vehicle_id,external_customer_id,year,odometer",
        f"V1,C1,2020,{BIG_INT}",
        f"V2,C1,2020,{BIG_INT + 1}",
        f"V3,C1,2020,-{BIG_INT + 2}",
        f"V4,C1,2020,{'9' * 140_000}",
        f"V5,C1,2020,{'0' * 30}{BIG_INT}",
        "V6,C1,99999999999999999999,1",
        "V7,C1,2020,+5",
        "V8,C1,2020,-0",
        f"V9,C1,2020,-{BIG_INT + 1}",
    )})
    odometer = "odometer must be at least 0 and at most 9223372036854775807"
    year = "year must be at least 1886 and below the current year + 2"
    assert exceptions == {
        ("vehicles", 2, "odometer", "range"): odometer,
        ("vehicles", 3, "odometer", "range"): odometer,
        ("vehicles", 4, "odometer", "range"): odometer,
        ("vehicles", 6, "year", "range"): year,
        ("vehicles", 7, "odometer", "type"): "odometer is not an integer",
        ("vehicles", 9, "odometer", "range"): odometer,
    }
    assert published(db, "vehicles", "odometer") == {"V1": (BIG_INT,), "V5": (BIG_INT,), "V8": (0,)}
    # The smallest 64-bit integer is typed (and then below the odometer's 0); one less is no bigint at all.
    staged = dict(query(db, "select external_vehicle_id, odometer from analytics_staging.stg_sms__vehicles"
                            " where external_vehicle_id in ('V3', 'V9')"))
    assert staged == {"V3": None, "V9": -BIG_INT - 1}


def test_ids_longer_than_64_characters_are_format_errors_and_reject_their_children(db: Warehouse, load: Load) -> None:
    at_limit, over, huge = "C" * 64, "D" * 65, "E" * 10_000
    exceptions = load({
        "customers.csv": csv_file(
            "external_customer_id,last_name", "C1,Smith", f"{at_limit},Max", f"{over},Over", f"{huge},Huge",
        ),
        "vehicles.csv": csv_file(
            "external_vehicle_id,external_customer_id",
            f"V1,{at_limit}", f"V2,{over}", f"V3,{huge}", f"V4,{'F' * 65}", f"{'W' * 65},C1",
        ),
    })
    too_long = "{} is longer than 64 characters"
    rejected = {key: message for key, message in exceptions.items() if key[3] == "parent_rejected"}
    assert set(rejected) == {("vehicles", 2, "external_customer_id", "parent_rejected"),
                             ("vehicles", 3, "external_customer_id", "parent_rejected")}
    # A reference longer than an id can be is wrong in the child's own row too.
    assert {key: message for key, message in exceptions.items() if key[3] == "format"} == {
        ("customers", 3, "external_customer_id", "format"): too_long.format("external_customer_id"),
        ("customers", 4, "external_customer_id", "format"): too_long.format("external_customer_id"),
        ("vehicles", 2, "external_customer_id", "format"): too_long.format("external_customer_id"),
        ("vehicles", 3, "external_customer_id", "format"): too_long.format("external_customer_id"),
        ("vehicles", 4, "external_customer_id", "format"): too_long.format("external_customer_id"),
        ("vehicles", 5, "external_vehicle_id", "format"): too_long.format("external_vehicle_id"),
    }
    assert set(exceptions) - set(rejected) - {k for k in exceptions if k[3] == "format"} == {
        ("vehicles", 4, "external_customer_id", "orphan")}
    assert set(published(db, "customers", "last_name")) == {"C1", at_limit}
    assert set(published(db, "vehicles", "customer_id")) == {"V1"}


WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
              "\u2028\u2029\u202f\u205f\u3000"


def test_values_are_trimmed_of_every_unicode_space(db: Warehouse, load: Load) -> None:
    assert all(c.isspace() for c in WHITE_SPACE)
    exceptions = load({
        "customers.csv": csv_file(
            "external_customer_id,first_name,last_name,company_name",
            "C1,Ann,Smith,",
            f'"{WHITE_SPACE}C2{WHITE_SPACE}","\u00a0Bo\u3000",Jones,',
            "C3,Cy,\t,\u00a0",
            "\tC4,Di,Roe,",
            "C4,Ed,Poe,",
        ),
        "vehicles.csv": csv_file(
            "external_vehicle_id,external_customer_id", "V1,\u00a0C1", "\u2003V2\t,C2",
        ),
    })
    assert set(exceptions) == {
        ("customers", 3, "last_name", "required"),
        # A tab-prefixed id is the same id: two rows carry it.
        ("customers", 4, "external_customer_id", "duplicate"),
        ("customers", 5, "external_customer_id", "duplicate"),
    }
    assert published(db, "customers", "first_name") == {"C1": ("Ann",), "C2": ("Bo",)}
    customer_ids = {external: uuid for uuid, external in query(db, "select id, external_id from prod_sms.customers")}
    assert published(db, "vehicles", "customer_id") == {"V1": (customer_ids["C1"],), "V2": (customer_ids["C2"],)}


EMAILS = [
    ("ANN@Example.COM", "ann@example.com"),
    ("o'brien+tag@mail.example.org", "o'brien+tag@mail.example.org"),
    ("\u0130nfo@example.com", None),  # capital I with a dot: lower() made it info@
    ("\u212aelvin@example.com", None),  # the Kelvin sign: lower() made it kelvin@
    ("caf\u00e9@example.com", None),
    ("a..b@example.com", None),
    (".ab@example.com", None),
    ("ab.@example.com", None),
    ("a.b@ex\u0130mple.com", None),
]


@pytest.mark.parametrize("entity", ["customers", "suppliers"])
def test_emails_are_lowercased_in_ascii_only_and_malformed_ones_are_format_errors(
    db: Warehouse, load: Load, entity: str
) -> None:
    header = "external_customer_id,last_name,email" if entity == "customers" else "external_supplier_id,name,email"
    # C1 (the base load's invoice refers to it) has a valid address.
    key = entity[0].upper()
    exceptions = load({f"{entity}.csv": csv_file(
        header, *(f"{key}{n},Name,{email}" for n, (email, _) in enumerate(EMAILS, start=1)))})
    bad = {n for n, (_, stored) in enumerate(EMAILS, start=1) if stored is None}
    assert exceptions == {(entity, n, "email", "format"): "email is not a valid email address" for n in bad}
    assert published(db, entity, "email") == {
        f"{key}{n}": (stored,) for n, (_, stored) in enumerate(EMAILS, start=1) if stored is not None}


# Per entity: every column typed and every row-level rule's condition, and its message where it is broken (as the
# exception selects compute it), over `probe`: one text `v` per row, cleaned as staging cleans it, in every column.
# Values are cast to text so that nothing is left unevaluated.
PROBE_SQL = """
{%- for entity, spec in sms_v1_contract().items() %}
-- entity: {{ entity }}
select
    {%- for column in spec.columns %}
    ({{ sms_typed_value(column) }})::text as "typed_{{ column.name }}",
    {%- for check in sms_v1_column_checks(column, spec) %}
    ({{ check.violated }})::text as "{{ check.rule }}_{{ column.name }}",
    (case when {{ check.violated }} then {{ check.message }} end)::text as "message_{{ check.rule }}_{{ column.name }}",
    {%- endfor %}
    {%- endfor %}
    1 as done
from (
    select
        {%- for column in spec.columns %}
        {{ sms_clean('v') }} as "{{ column.name }}"{{ ',' if not loop.last }}
        {%- endfor %}
    from probe
) as cleaned;
{%- endfor %}
"""
NUMBERS = st.from_regex(r"\A[+-]?0{0,25}[0-9]{0,25}(\.[0-9]{0,25})?\Z").map(str)
DATES = st.from_regex(r"\A[0-9]{1,5}-[0-9]{1,3}-[0-9]{1,3}([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                      r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?\Z")
TEXTS = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40)
EXTREMES = [
    "9" * 140_000, "0." + "1" * 20_000, "-" + "0" * 200_000 + "1", "1" + "0" * 131_072, "." + "5" * 16_384,
    str(BIG_INT), str(BIG_INT + 1), str(-BIG_INT - 1), str(-BIG_INT - 2), "-0", "+0", "0" * 30, "-.5", "5.",
    "9999-12-31T23:59:59.999999+15:59", "0001-01-01T00:00:00-15:59", "0000-01-01", "2024-02-29", "9999-99-99",
    "\u212aelvin@example.com", "\u0130nfo@EXAMPLE.com", "\u00a0\t", "1M8GDM9AXKP042788", "i" * 17, "\u00df" * 17,
]


@pytest.fixture
def probe_sql(db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """PROBE_SQL compiled by dbt, as one statement per entity."""
    from dbt.cli.main import dbtRunner

    for name, value in db.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO / "dbt_project")
    result = dbtRunner().invoke(["compile", "--inline", PROBE_SQL, "--vars", "{run_id: 1}", "--quiet",
                                 "--profiles-dir", str(REPO), "--target-path", str(tmp_path / "target")])
    assert result.success, result.exception
    [compiled] = result.result.results
    statements = [s for s in compiled.node.compiled_code.split(";") if "-- entity:" in s]
    assert len(statements) == len(load_contract("sms_v1").entities)
    return statements


def probe(db: Warehouse, statements: list[str], values: list[str]) -> None:
    with contextlib.closing(db.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("create temporary table probe (v text) on commit drop")
        cur.executemany("insert into probe values (%s)", [(v,) for v in values])
        for statement in statements:
            cur.execute(statement)
            assert len(cur.fetchall()) == len(values)


def test_no_text_makes_a_typed_value_or_a_rule_fail(db: Warehouse, probe_sql: list[str]) -> None:
    probe(db, probe_sql, EXTREMES)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.one_of(NUMBERS, DATES, TEXTS), min_size=1, max_size=20))
    def any_text(values: list[str]) -> None:
        probe(db, probe_sql, values)

    any_text()

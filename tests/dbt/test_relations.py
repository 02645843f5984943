"""The record of where each build put its models, which the loader reads instead of dbt's manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.database import Warehouse
from loader.dbt.relations import MissingRelation, Relation, dbt_relation, record_relations
from loader.dbt.runner import dbt_build
from loader.runs.slots import Slot


def test_a_partial_build_keeps_what_earlier_builds_recorded(tmp_path: Path) -> None:
    target = tmp_path / "target"
    with pytest.raises(MissingRelation, match="'ledger' has not been built"):
        dbt_relation(target, "ledger")
    record_relations(target, {"ledger": Relation("analytics_audit", "ledger"),
                              "publish_customers": Relation("analytics_publish", "publish_customers")})
    record_relations(target, {"ledger": Relation("analytics_slot2_audit", "ledger")})
    assert dbt_relation(target, "ledger") == Relation("analytics_slot2_audit", "ledger")
    assert dbt_relation(target, "publish_customers") == Relation("analytics_publish", "publish_customers")
    with pytest.raises(MissingRelation):
        dbt_relation(target, "exceptions")


def test_a_build_that_cannot_record_its_models_fails_and_says_where(db: Warehouse, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A full or broken target folder fails the build with a message, never a traceback."""
    slot = Slot(2, tmp_path / "home")
    (slot.target_dir / "relations.json").mkdir(parents=True)
    # The build sets these for the process; restored after the test.
    for name in ("PGOPTIONS", "LOADER_DBT_SCHEMA", "LOADER_DBT_SLOT"):
        monkeypatch.setenv(name, "")
    outcome = dbt_build(db, slot, select="stg_sms__customers")
    assert not outcome.success
    assert f"could not record where dbt built its models in {slot.target_dir}" in outcome.summary()

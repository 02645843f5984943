"""The record of where each build put its models, which the loader reads instead of dbt's manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.dbt.relations import MissingRelation, Relation, dbt_relation, record_relations


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

"""The contract model: entities, files, columns and rules, read from YAML."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACTS_DIR = Path(__file__).parent
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FILE_NAME = re.compile(r"^[a-z][a-z0-9_]*\.csv$")

ColumnType = Literal["id", "text", "int", "decimal", "money", "date", "datetime", "email", "phone", "vin", "enum"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What staging trims from both ends of every value: Unicode's White_Space characters. The dbt macro
# <contract>_white_space() is rendered from it, and the unchanged-rows check trims keys with it too.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# The staging models cast integers to bigint and production stores them as bigint: no bound may lie outside it.
BIGINT_RANGE = (-(2**63), 2**63 - 1)
# PostgreSQL's numeric(p, s) allows a precision of at most 1000.
MAX_NUMERIC_PRECISION = 1000


class IdBounds(_Strict):
    max_length: int = Field(ge=1)


class IntBounds(_Strict):
    lowest: int = Field(ge=BIGINT_RANGE[0], le=0)
    highest: int = Field(ge=0, le=BIGINT_RANGE[1])


class NumberBounds(_Strict):
    """Digits before the decimal point (leading zeros not counted) and after it (as written)."""

    integer_digits: int = Field(ge=1)
    scale: int = Field(ge=0)

    @property
    def precision(self) -> int:
        return self.integer_digits + self.scale

    @model_validator(mode="after")
    def _fits_numeric(self) -> NumberBounds:
        if self.precision > MAX_NUMERIC_PRECISION:
            raise ValueError(f"integer_digits + scale must be at most {MAX_NUMERIC_PRECISION} (numeric's precision)")
        return self


class TypeBounds(_Strict):
    """What the bounded column types hold; the staging rules and the production DDL follow them."""

    id: IdBounds
    int: IntBounds
    decimal: NumberBounds
    money: NumberBounds

    def of(self, column_type: str) -> dict[str, object]:
        """The bounds of a column type as the contract macro states them per column (none for unbounded types)."""
        if column_type not in type(self).model_fields:
            return {}
        bounds: BaseModel = getattr(self, column_type)
        return bounds.model_dump()


class Column(_Strict):
    name: str = Field(pattern=IDENTIFIER.pattern)
    type: ColumnType
    required: bool = False
    description: str
    references: str | None = None
    values: tuple[str, ...] = ()
    default: str | None = None
    min: int | None = None
    max_years_ahead: int | None = None
    nonzero: bool = False
    # Columns this total must add up to (within rounding); later parts may be missing and count as 0.
    sum_of: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _enum_has_values(self) -> Column:
        if (self.type == "enum") != bool(self.values):
            raise ValueError(f"column {self.name}: 'values' is required for enum columns and only for them")
        return self


class RequiredOneOf(_Strict):
    columns: tuple[str, ...]
    report_field: str


class Entity(_Strict):
    name: str = Field(pattern=IDENTIFIER.pattern)
    file: str = Field(pattern=FILE_NAME.pattern)
    aliases: tuple[str, ...] = ()
    key: str
    description: str
    min_rows: int = 0
    columns: tuple[Column, ...]
    required_one_of: tuple[RequiredOneOf, ...] = ()

    @property
    def file_names(self) -> tuple[str, ...]:
        return (self.file, *self.aliases)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    @model_validator(mode="after")
    def _check_names(self) -> Entity:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"entity {self.name}: duplicate column names")
        if self.key not in names:
            raise ValueError(f"entity {self.name}: key {self.key!r} is not a column")
        for rule in self.required_one_of:
            unknown = set(rule.columns) - set(names)
            if unknown:
                raise ValueError(f"entity {self.name}: required_one_of names unknown columns {sorted(unknown)}")
        for col in self.columns:
            unknown = set(col.sum_of) - set(names)
            if unknown:
                raise ValueError(f"entity {self.name}: {col.name} sum_of names unknown columns {sorted(unknown)}")
        return self


class Contract(_Strict):
    name: str = Field(pattern=IDENTIFIER.pattern)
    title: str
    raw_dataset: str = Field(pattern=IDENTIFIER.pattern)
    production_schema: str = Field(pattern=IDENTIFIER.pattern)
    types: TypeBounds
    entities: tuple[Entity, ...]

    @property
    def production_ddl(self) -> Path:
        return CONTRACTS_DIR / f"{self.name}.sql"

    def entity(self, name: str) -> Entity:
        for ent in self.entities:
            if ent.name == name:
                return ent
        raise KeyError(f"contract {self.name} has no entity {name!r}")

    def entity_for_file(self, file_name: str) -> Entity | None:
        for ent in self.entities:
            if file_name in ent.file_names:
                return ent
        return None

    @model_validator(mode="after")
    def _check_references(self) -> Contract:
        seen: set[str] = set()
        files: set[str] = set()
        for ent in self.entities:
            for col in ent.columns:
                if col.references is None:
                    continue
                if col.references != ent.name and col.references not in seen:
                    raise ValueError(
                        f"{ent.name}.{col.name} references {col.references!r}, which is not listed before it"
                    )
            overlap = files & set(ent.file_names)
            if overlap:
                raise ValueError(f"file names {sorted(overlap)} belong to more than one entity")
            files |= set(ent.file_names)
            seen.add(ent.name)
        return self


def available_contracts() -> list[str]:
    return sorted(p.stem for p in CONTRACTS_DIR.glob("*.yaml"))


@cache
def load_contract(name: str) -> Contract:
    """Return the named contract; raise KeyError naming the known ones if there is none."""
    if name not in available_contracts():
        raise KeyError(f"unknown contract {name!r}; known contracts: {', '.join(available_contracts())}")
    data = yaml.safe_load((CONTRACTS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    return Contract.model_validate(data)

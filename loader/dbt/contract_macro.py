"""The `<contract>_contract()` dbt macro rendered from a contract: Jinja cannot read the YAML, so it gets a copy."""

from __future__ import annotations

import textwrap
from typing import get_args

from loader.contracts import Column, Contract, Entity
from loader.contracts.model import WHITE_SPACE, ColumnType, TypeBounds

INDENT = "    "


def render_contract_macro(contract: Contract) -> str:
    lines = [
        *_header(contract),
        f"{{%- macro {contract.name}_contract() -%}}",
        f"{INDENT}{{% do return({{",
    ]
    for entity in contract.entities:
        lines += _entity_lines(entity, contract.types)
    lines += [f"{INDENT}}}) %}}", "{%- endmacro -%}", "", *_white_space_macro(contract)]
    return "\n".join(lines) + "\n"


def _white_space_macro(contract: Contract) -> list[str]:
    """What staging trims from every value, as a SQL string of the characters (see WHITE_SPACE)."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in WHITE_SPACE)
    return [
        "{#- The characters trimmed from both ends of every value: Unicode's White_Space. -#}",
        f"{{%- macro {contract.name}_white_space() -%}}",
        f"{INDENT}e'{escaped}'",
        "{%- endmacro -%}",
    ]


def _header(contract: Contract) -> list[str]:
    explanation = (
        f"The {contract.name} columns and their validation rules, per entity, for the staging models; the only"
        " place in the dbt project that names them. Keys per column: type"
        f" ({', '.join(get_args(ColumnType))}), required, values (enum), default, min, max_years_ahead (upper bound"
        " relative to the current year, exclusive), nonzero, sum_of (the columns this total must add up to)."
        " The bounds of the column's type: max_length (id), lowest and highest (int), integer_digits and scale"
        " (decimal, money)."
        " Per entity, required_one_of: groups of columns of which at least one must be present, reported on"
        " report_field. Only `phone` typed columns get the short_phone warning; a phone number typed `text` in"
        " the contract is plain text."
    )
    generated = (f"Generated from loader/contracts/{contract.name}.yaml by `python -m loader.dbt.sources`;"
                 " do not edit by hand.")
    return [
        "{#-",
        # One line, so that the command is not split.
        INDENT + generated,
        "",
        *_wrapped(explanation),
        "-#}",
    ]


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=80, initial_indent=INDENT, subsequent_indent=INDENT)


def _entity_lines(entity: Entity, types: TypeBounds) -> list[str]:
    pad = INDENT * 2
    lines = [f"{pad}{_literal(entity.name)}: {{", f"{pad}{INDENT}'columns': ["]
    lines += [f"{pad}{INDENT * 2}{_literal(_column_spec(c, types))}," for c in entity.columns]
    lines.append(f"{pad}{INDENT}],")
    # Most entities have no such group; the staging macros read a missing key as an empty list.
    if entity.required_one_of:
        lines.append(f"{pad}{INDENT}'required_one_of': [")
        lines += [f"{pad}{INDENT * 2}{_literal({'columns': g.columns, 'report_field': g.report_field})},"
                  for g in entity.required_one_of]
        lines.append(f"{pad}{INDENT}],")
    lines.append(f"{pad}}},")
    return lines


def _column_spec(column: Column, types: TypeBounds) -> dict[str, object]:
    """Only the rules the column has: the rule macros read a missing key as no rule, and short lines read better."""
    # The bounds travel with each column, so that a rule macro needs nothing but the column's spec.
    spec: dict[str, object] = {"name": column.name, "type": column.type, **types.of(column.type)}
    if column.values:
        spec["values"] = column.values
    if column.default is not None:
        spec["default"] = column.default
    if column.required:
        spec["required"] = True
    if column.min is not None:
        spec["min"] = column.min
    if column.max_years_ahead is not None:
        spec["max_years_ahead"] = column.max_years_ahead
    if column.nonzero:
        spec["nonzero"] = True
    if column.sum_of:
        spec["sum_of"] = column.sum_of
    return spec


def _literal(value: object) -> str:
    """A Jinja literal for `value`; Jinja spells booleans and None in lower case, unlike Python's repr."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # Jinja decodes string literals with Python's unicode-escape rules.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Jinja literal for {type(value).__name__}")

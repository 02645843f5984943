{#-
    The columns of an exception row, in report order. Staging, the cross-row
    checks and the audit report stack exception rows with `union all`, which
    matches columns by position, so every branch lists them from here.
-#}
{%- macro sms_v1_exception_columns() -%}
    entity,
    row_number,
    line_number,
    field,
    rule,
    severity,
    value,
    message
{%- endmacro -%}

-- Fails on every row with a NULL in any of the columns, naming which: one scan
-- of the model for all its required columns, where a not_null test per column
-- reads a million-row plan once per column (and costs dbt a node each).
{% test not_null_columns(model, columns) %}

    select array_remove(array[{% for column in columns %}case when {{ column }} is null then '{{ column }}' end{{ ', ' if not loop.last }}{% endfor %}], null) as null_columns
    from {{ model }}
    where {{ columns | join(' is null or ') }} is null

{% endtest %}

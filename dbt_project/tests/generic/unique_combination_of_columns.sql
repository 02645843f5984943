-- Fails on every combination of the columns that occurs more than once: the
-- grain of a model that has no single-column key (dbt_utils is not a dependency).
{% test unique_combination_of_columns(model, columns) %}

    select
        {{ columns | join(', ') }},
        count(*) as occurrences
    from {{ model }}
    group by {{ columns | join(', ') }}
    having count(*) > 1

{% endtest %}

-- Fails on every reference (an internal id) of a publish plan that will point at
-- nothing once the plan is published: the parent must be in the parent's plan
-- (published in the same transaction, parents first) or already in production.
{% test reference_in_plan_or_production(model, column_name, plan, production) %}

    select child.{{ column_name }}
    from {{ model }} as child
    where
        child.{{ column_name }} is not null
        and not exists (
            select 1 from {{ plan }} as parent
            where parent.id = child.{{ column_name }}
        )
        and not exists (
            -- Production's keys lead with the shop's.
            select 1 from {{ production }} as parent
            where parent.shop_key = child.shop_key and parent.id = child.{{ column_name }}
        )

{% endtest %}

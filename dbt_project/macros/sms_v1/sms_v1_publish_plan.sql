{#-
    The publish plan of an entity: its valid rows of one run in the production
    table's shape (without created_at, updated_at and source markers, which
    the publish step sets), each with what publishing it does to production:
    insert, update (a business column differs) or nothing (unchanged).
    `business_columns`: (production column, SQL type[, checked column when
    the name differs]) in the production table's order.
-#}
{%- macro sms_v1_publish_plan(entity, business_columns) -%}
{%- set names = business_columns | map(attribute=0) | list -%}
with

checked as (
    select * from {{ ref('int_sms__' ~ entity ~ '_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', entity) }}
    where {{ sms_of_this_shop() }}
),

planned as (
    select
        checked.id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        {{ sms_shop_key() }} as shop_key,
        checked.external_id,
        {{ sms_load_literal('load_id') }} as load_id,
        {%- for column in business_columns %}
        checked.{{ column[2] if column | length > 2 else column[0] }}::{{ column[1] }} as {{ column[0] }},
        {%- endfor %}
        checked.row_number as _row_number,
        checked.line_number as _line_number
    from checked
),

final as (
    select
        planned.id,
        planned.partner_id,
        planned.shop_id,
        planned.shop_key,
        planned.external_id,
        planned.load_id,
        {{ sms_column_list('planned', names, trailing_comma=true) }}
        planned._row_number,
        planned._line_number,
        {{ sms_publish_action('planned', 'production', names) }} as _action
    from planned
    left join production on planned.id = production.id
)

select * from final
{%- endmacro -%}

{%- set business_columns = [
    'invoice_id',
    'parent_line_item_id',
    'line_type',
    'description',
    'part_number',
    'quantity',
    'unit_price',
    'line_total',
] -%}
-- The publish plan for prod_sms.line_items: the valid invoice lines of one run, in the
-- production table's shape (without created_at, updated_at and source markers,
-- which the publish step sets), each with what publishing it does to
-- production: insert, update (a business column differs) or nothing (unchanged).
with

checked as (
    select * from {{ ref('int_sms__line_items_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', 'line_items') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

planned as (
    select
        checked.id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        checked.external_id,
        {{ sms_load_literal('load_id') }} as load_id,
        checked.invoice_id::uuid as invoice_id,
        checked.parent_line_item_id::uuid as parent_line_item_id,
        checked.line_type::text as line_type,
        checked.description::text as description,
        checked.part_number::text as part_number,
        checked.quantity::numeric as quantity,
        checked.unit_price::numeric(14, 2) as unit_price,
        checked.line_total::numeric(14, 2) as line_total,
        checked.row_number as _row_number,
        checked.line_number as _line_number
    from checked
),

final as (
    select
        planned.id,
        planned.partner_id,
        planned.shop_id,
        planned.external_id,
        planned.load_id,
        {{ sms_column_list('planned', business_columns, trailing_comma=true) }}
        planned._row_number,
        planned._line_number,
        {{ sms_publish_action('planned', 'production', business_columns) }} as _action
    from planned
    left join production on planned.id = production.id
)

select * from final

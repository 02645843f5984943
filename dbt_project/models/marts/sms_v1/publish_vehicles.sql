{%- set business_columns = [
    'customer_id',
    'vin',
    'year',
    'make',
    'model',
    'trim',
    'color',
    'license_plate',
    'license_state',
    'odometer',
] -%}
-- The publish plan for prod_sms.vehicles: the valid vehicles of one run, in the
-- production table's shape (without created_at, updated_at and source markers,
-- which the publish step sets), each with what publishing it does to
-- production: insert, update (a business column differs) or nothing (unchanged).
with

checked as (
    select * from {{ ref('int_sms__vehicles_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', 'vehicles') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

planned as (
    select
        checked.id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        checked.external_id,
        {{ sms_load_literal('load_id') }} as load_id,
        checked.customer_id::uuid as customer_id,
        checked.vin::text as vin,
        checked.year::integer as year,
        checked.make::text as make,
        checked.model::text as model,
        checked.trim::text as trim,
        checked.color::text as color,
        checked.license_plate::text as license_plate,
        checked.license_state::text as license_state,
        checked.odometer::bigint as odometer,
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

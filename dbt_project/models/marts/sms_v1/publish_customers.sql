{%- set business_columns = [
    'first_name',
    'last_name',
    'company_name',
    'email',
    'phone',
    'address_line1',
    'address_line2',
    'city',
    'state',
    'postal_code',
    'source_created_at',
] -%}
-- The publish plan for prod_sms.customers: the valid people and companies of one run, in the
-- production table's shape (without created_at, updated_at and source markers,
-- which the publish step sets), each with what publishing it does to
-- production: insert, update (a business column differs) or nothing (unchanged).
with

checked as (
    select * from {{ ref('int_sms__customers_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', 'customers') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

planned as (
    select
        checked.id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        checked.external_id,
        {{ sms_load_literal('load_id') }} as load_id,
        checked.first_name::text as first_name,
        checked.last_name::text as last_name,
        checked.company_name::text as company_name,
        checked.email::text as email,
        checked.phone::text as phone,
        checked.address_line1::text as address_line1,
        checked.address_line2::text as address_line2,
        checked.city::text as city,
        checked.state::text as state,
        checked.postal_code::text as postal_code,
        checked.created_at::timestamptz as source_created_at,
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

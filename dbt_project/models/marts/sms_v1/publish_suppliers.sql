{%- set business_columns = [
    'name',
    'phone',
    'email',
    'account_number',
    'address_line1',
    'city',
    'state',
    'postal_code',
] -%}
-- The publish plan for prod_sms.suppliers: the valid suppliers of one run, in the
-- production table's shape (without created_at, updated_at and source markers,
-- which the publish step sets), each with what publishing it does to
-- production: insert, update (a business column differs) or nothing (unchanged).
with

checked as (
    select * from {{ ref('int_sms__suppliers_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', 'suppliers') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

planned as (
    select
        checked.id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        checked.external_id,
        {{ sms_load_literal('load_id') }} as load_id,
        checked.name::text as name,
        checked.phone::text as phone,
        checked.email::text as email,
        checked.account_number::text as account_number,
        checked.address_line1::text as address_line1,
        checked.city::text as city,
        checked.state::text as state,
        checked.postal_code::text as postal_code,
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

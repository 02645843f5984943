{%- set business_columns = [
    'customer_id',
    'vehicle_id',
    'invoice_number',
    'document_type',
    'status',
    'invoice_date',
    'subtotal',
    'tax_total',
    'total',
    'odometer_in',
] -%}
-- The publish plan for prod_sms.invoices: the valid invoices, estimates and repair orders of one run, in the
-- production table's shape (without created_at, updated_at and source markers,
-- which the publish step sets), each with what publishing it does to
-- production: insert, update (a business column differs) or nothing (unchanged).
with

checked as (
    select * from {{ ref('int_sms__invoices_checked') }}
    where not is_rejected
),

production as (
    select * from {{ source('prod_sms', 'invoices') }}
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
        checked.vehicle_id::uuid as vehicle_id,
        checked.invoice_number::text as invoice_number,
        checked.document_type::text as document_type,
        checked.status::text as status,
        checked.invoice_date::date as invoice_date,
        checked.subtotal::numeric(14, 2) as subtotal,
        checked.tax_total::numeric(14, 2) as tax_total,
        checked.total::numeric(14, 2) as total,
        checked.odometer_in::bigint as odometer_in,
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

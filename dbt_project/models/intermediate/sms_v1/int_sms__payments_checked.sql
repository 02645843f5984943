{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The payments of one run, each with its verdict and internal ids. A payment is
-- rejected for a staging error, an id shared with another row, or an invoice
-- that is `orphan` or `parent_rejected`.
with

staged as (
    select * from {{ ref('stg_sms__payments') }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = 'payments'
),

invoices as (
    select * from {{ ref('int_sms__invoices_checked') }}
),

production_invoices as (
    select * from {{ source('prod_sms', 'invoices') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_payment_id', 'external_invoice_id']) }}
),

-- A ragged record's fields, and a field with undecodable bytes, are no key or reference.
keyed as (
    select
        staged.*,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_payment_id, false)
                then staged.external_payment_id
        end as external_id,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_invoice_id, false)
                then staged.external_invoice_id
        end as invoice_external_id
    from staged
    left join row_status on staged.row_number = row_status.row_number
),

id_counts as (
    select
        external_id,
        count(*) as rows_with_id
    from keyed
    where external_id is not null
    group by external_id
),

invoices_in_load as (
    select
        external_id,
        bool_and(is_rejected) as is_rejected
    from invoices
    where external_id is not null
    group by external_id
),

resolved as (
    select
        keyed.*,
        coalesce(id_counts.rows_with_id > 1, false) as is_duplicate,
        {{ sms_internal_id('invoices', 'keyed.invoice_external_id') }} as invoice_id
    from keyed
    left join id_counts on keyed.external_id = id_counts.external_id
),

checked as (
    select
        resolved.row_number,
        resolved.line_number,
        resolved.external_id,
        {{ sms_internal_id('payments', 'resolved.external_id') }} as id,
        resolved.invoice_external_id,
        resolved.invoice_id,
        resolved.has_staging_error,
        resolved.has_staging_warning,
        resolved.is_duplicate,
        resolved.invoice_external_id is not null
        and invoices_in_load.external_id is null
        and production_invoices.id is null as is_invoice_orphan,
        coalesce(invoices_in_load.is_rejected, false) as is_invoice_parent_rejected,
        {{ sms_contract_columns('resolved', 'payments') }}
    from resolved
    left join invoices_in_load on resolved.invoice_external_id = invoices_in_load.external_id
    left join production_invoices on resolved.invoice_id = production_invoices.id
),

final as (
    select
        *,
        has_staging_warning as has_warning,
        has_staging_error
        or is_duplicate
        or is_invoice_orphan
        or is_invoice_parent_rejected as is_rejected
    from checked
)

select * from final

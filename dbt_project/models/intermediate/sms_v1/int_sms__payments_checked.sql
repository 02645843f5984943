{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The payments of one run, each with its verdict and internal ids. A payment is
-- rejected for a staging error, an id shared with another row, or an invoice
-- that is `orphan` or `parent_rejected`.
--
-- As in int_sms__line_items_checked: the payments are read by CTEs that
-- PostgreSQL inlines, production is asked only about invoices this load does
-- not have (normally none), and an invoice's internal id is taken from its
-- checked row rather than worked out again per payment.
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
    where {{ sms_of_this_shop() }}
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_payment_id', 'external_invoice_id']) }}
),

-- Not materialized: each reader takes only the columns it needs.
keyed as not materialized (
    {{ sms_v1_keyed('external_payment_id', {'invoice_external_id': 'external_invoice_id'}) }}
),

-- Normally none. Joined rather than read with `in` (`is_duplicate` is read
-- twice, and each reading would aggregate all payments again), and materialized
-- so that parallel workers do not each aggregate them.
duplicated_ids as materialized (
    {{ sms_v1_duplicated_ids('keyed') }}
),

invoices_in_load as (
    {{ sms_v1_in_load('invoices') }}
),

-- The `in` set is hashed on first use, so production is read only if some
-- payment's invoice is not in this load.
checked as (
    select
        keyed.row_number,
        keyed.line_number,
        keyed.external_id,
        {{ sms_internal_id('payments', 'keyed.external_id') }} as id,
        keyed.invoice_external_id,
        coalesce(
            invoices_in_load.id, {{ sms_internal_id('invoices', 'keyed.invoice_external_id') }}
        ) as invoice_id,
        keyed.has_staging_error,
        keyed.has_staging_warning,
        duplicated_ids.external_id is not null as is_duplicate,
        {{ sms_v1_is_orphan(
            'invoices', 'keyed.invoice_external_id', 'invoices_in_load', 'production_invoices'
        ) }} as is_invoice_orphan,
        coalesce(invoices_in_load.is_rejected, false) as is_invoice_parent_rejected,
        {{ sms_contract_columns('keyed', 'payments') }}
    from keyed
    left join duplicated_ids on keyed.external_id = duplicated_ids.external_id
    left join invoices_in_load on keyed.invoice_external_id = invoices_in_load.external_id
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

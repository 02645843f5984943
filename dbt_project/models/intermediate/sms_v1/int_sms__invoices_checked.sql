{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The invoices of one run, each with its verdict and internal ids. An invoice
-- is rejected for a staging error, an id shared with another row, or a
-- customer or vehicle that is `orphan` or `parent_rejected`. A vehicle owned
-- by another customer (in this load or in production) is only a warning.
with

staged as (
    select * from {{ ref('stg_sms__invoices') }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = 'invoices'
),

customers as (
    select * from {{ ref('int_sms__customers_checked') }}
),

vehicles as (
    select * from {{ ref('int_sms__vehicles_checked') }}
),

production_customers as (
    select * from {{ source('prod_sms', 'customers') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

production_vehicles as (
    select * from {{ source('prod_sms', 'vehicles') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_invoice_id', 'external_customer_id', 'external_vehicle_id']) }}
),

-- A ragged record's fields, and a field with undecodable bytes, are no key or reference.
keyed as (
    select
        staged.*,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_invoice_id, false)
                then staged.external_invoice_id
        end as external_id,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_customer_id, false)
                then staged.external_customer_id
        end as customer_external_id,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_vehicle_id, false)
                then staged.external_vehicle_id
        end as vehicle_external_id
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

customers_in_load as (
    select
        external_id,
        bool_and(is_rejected) as is_rejected
    from customers
    where external_id is not null
    group by external_id
),

-- The owner counts only when one row carries the vehicle id (else it is rejected anyway).
vehicles_in_load as (
    select
        external_id,
        bool_and(is_rejected) as is_rejected,
        case when count(*) = 1 then min(customer_external_id) end as customer_external_id
    from vehicles
    where external_id is not null
    group by external_id
),

resolved as (
    select
        keyed.*,
        coalesce(id_counts.rows_with_id > 1, false) as is_duplicate,
        {{ sms_internal_id('customers', 'keyed.customer_external_id') }} as customer_id,
        {{ sms_internal_id('vehicles', 'keyed.vehicle_external_id') }} as vehicle_id
    from keyed
    left join id_counts on keyed.external_id = id_counts.external_id
),

checked as (
    select
        resolved.row_number,
        resolved.line_number,
        resolved.external_id,
        {{ sms_internal_id('invoices', 'resolved.external_id') }} as id,
        resolved.customer_external_id,
        resolved.vehicle_external_id,
        resolved.customer_id,
        resolved.vehicle_id,
        resolved.has_staging_error,
        resolved.has_staging_warning,
        resolved.is_duplicate,
        resolved.customer_external_id is not null
        and customers_in_load.external_id is null
        and production_customers.id is null as is_customer_orphan,
        coalesce(customers_in_load.is_rejected, false) as is_customer_parent_rejected,
        resolved.vehicle_external_id is not null
        and vehicles_in_load.external_id is null
        and production_vehicles.id is null as is_vehicle_orphan,
        coalesce(vehicles_in_load.is_rejected, false) as is_vehicle_parent_rejected,
        coalesce(
            case
                when vehicles_in_load.external_id is not null
                    then vehicles_in_load.customer_external_id <> resolved.customer_external_id
                else production_vehicles.customer_id <> resolved.customer_id
            end,
            false
        ) as is_vehicle_owner_mismatch,
        {{ sms_contract_columns('resolved', 'invoices') }}
    from resolved
    left join customers_in_load on resolved.customer_external_id = customers_in_load.external_id
    left join production_customers on resolved.customer_id = production_customers.id
    left join vehicles_in_load on resolved.vehicle_external_id = vehicles_in_load.external_id
    left join production_vehicles on resolved.vehicle_id = production_vehicles.id
),

final as (
    select
        *,
        has_staging_warning or is_vehicle_owner_mismatch as has_warning,
        has_staging_error
        or is_duplicate
        or is_customer_orphan
        or is_customer_parent_rejected
        or is_vehicle_orphan
        or is_vehicle_parent_rejected as is_rejected
    from checked
)

select * from final

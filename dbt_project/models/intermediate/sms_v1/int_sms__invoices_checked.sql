{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The invoices of one run, each with its verdict and internal ids. An invoice
-- is rejected for a staging error, an id shared with another row, or a
-- customer or vehicle that is `orphan` or `parent_rejected`. A vehicle owned
-- by another customer (in this load or in production) is only a warning.
--
-- As in int_sms__line_items_checked: the invoices are read by CTEs that
-- PostgreSQL inlines, production is asked only about references this load
-- does not resolve (normally none), and a customer's or vehicle's internal id
-- is taken from its checked row rather than worked out again per invoice.
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
    where {{ sms_of_this_shop() }}
),

-- Not materialized: a materialized copy has no index for the owner check's
-- lookup of a vehicle by its primary key.
production_vehicles as not materialized (
    select * from {{ source('prod_sms', 'vehicles') }}
    where {{ sms_of_this_shop() }}
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_invoice_id', 'external_customer_id', 'external_vehicle_id']) }}
),

-- Not materialized: each reader takes only the columns it needs.
keyed as not materialized (
    {{ sms_v1_keyed('external_invoice_id', {
        'customer_external_id': 'external_customer_id',
        'vehicle_external_id': 'external_vehicle_id',
    }) }}
),

-- Normally none. Joined rather than read with `in` (`is_duplicate` is read
-- twice, and each reading would aggregate all invoices again), and materialized
-- so that parallel workers do not each aggregate them.
duplicated_ids as materialized (
    {{ sms_v1_duplicated_ids('keyed') }}
),

customers_in_load as (
    {{ sms_v1_in_load('customers') }}
),

-- The owner counts only when one row carries the vehicle id (else it is rejected anyway).
vehicles_in_load as (
    {{ sms_v1_in_load('vehicles', extra_columns=[
        'case when count(*) = 1 then min(customer_external_id) end as customer_external_id',
    ]) }}
),

-- The `in` sets and the owner lookup run only for a customer or vehicle that
-- is not in this load, so production is normally not read at all.
checked as (
    select
        keyed.row_number,
        keyed.line_number,
        keyed.external_id,
        {{ sms_internal_id('invoices', 'keyed.external_id') }} as id,
        keyed.customer_external_id,
        keyed.vehicle_external_id,
        coalesce(
            customers_in_load.id, {{ sms_internal_id('customers', 'keyed.customer_external_id') }}
        ) as customer_id,
        coalesce(
            vehicles_in_load.id, {{ sms_internal_id('vehicles', 'keyed.vehicle_external_id') }}
        ) as vehicle_id,
        keyed.has_staging_error,
        keyed.has_staging_warning,
        duplicated_ids.external_id is not null as is_duplicate,
        {{ sms_v1_is_orphan(
            'customers', 'keyed.customer_external_id', 'customers_in_load', 'production_customers'
        ) }} as is_customer_orphan,
        coalesce(customers_in_load.is_rejected, false) as is_customer_parent_rejected,
        {{ sms_v1_is_orphan(
            'vehicles', 'keyed.vehicle_external_id', 'vehicles_in_load', 'production_vehicles'
        ) }} as is_vehicle_orphan,
        coalesce(vehicles_in_load.is_rejected, false) as is_vehicle_parent_rejected,
        coalesce(
            case
                when vehicles_in_load.external_id is not null
                    then vehicles_in_load.customer_external_id <> keyed.customer_external_id
                when keyed.vehicle_external_id is not null
                    then (
                        select production_vehicles.customer_id
                        from production_vehicles
                        where production_vehicles.id = {{ sms_internal_id('vehicles', 'keyed.vehicle_external_id') }}
                    )
                    <> coalesce(
                        customers_in_load.id, {{ sms_internal_id('customers', 'keyed.customer_external_id') }}
                    )
            end,
            false
        ) as is_vehicle_owner_mismatch,
        {{ sms_contract_columns('keyed', 'invoices') }}
    from keyed
    left join duplicated_ids on keyed.external_id = duplicated_ids.external_id
    left join customers_in_load on keyed.customer_external_id = customers_in_load.external_id
    left join vehicles_in_load on keyed.vehicle_external_id = vehicles_in_load.external_id
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

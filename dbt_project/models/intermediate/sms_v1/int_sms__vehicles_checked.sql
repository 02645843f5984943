{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The vehicles of one run, each with its verdict and internal ids. A vehicle is
-- rejected for a staging error, an id shared with another row, or an owner
-- that is `orphan` (neither in this load nor already imported for the shop) or
-- `parent_rejected` (in this load, but every row carrying its id rejected).
with

staged as (
    select * from {{ ref('stg_sms__vehicles') }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = 'vehicles'
),

customers as (
    select * from {{ ref('int_sms__customers_checked') }}
),

production_customers as (
    select * from {{ source('prod_sms', 'customers') }}
    where {{ sms_of_this_shop() }}
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_vehicle_id', 'external_customer_id']) }}
),

keyed as (
    {{ sms_v1_keyed('external_vehicle_id', {'customer_external_id': 'external_customer_id'}) }}
),

id_counts as (
    {{ sms_v1_id_counts('keyed') }}
),

customers_in_load as (
    {{ sms_v1_in_load('customers', with_id=false) }}
),

resolved as (
    select
        keyed.*,
        coalesce(id_counts.rows_with_id > 1, false) as is_duplicate,
        {{ sms_internal_id('customers', 'keyed.customer_external_id') }} as customer_id
    from keyed
    left join id_counts on keyed.external_id = id_counts.external_id
),

checked as (
    select
        resolved.row_number,
        resolved.line_number,
        resolved.external_id,
        {{ sms_internal_id('vehicles', 'resolved.external_id') }} as id,
        resolved.customer_external_id,
        resolved.customer_id,
        resolved.has_staging_error,
        resolved.has_staging_warning,
        resolved.is_duplicate,
        resolved.customer_external_id is not null
        and customers_in_load.external_id is null
        and production_customers.id is null as is_customer_orphan,
        coalesce(customers_in_load.is_rejected, false) as is_customer_parent_rejected,
        {{ sms_contract_columns('resolved', 'vehicles') }}
    from resolved
    left join customers_in_load on resolved.customer_external_id = customers_in_load.external_id
    left join production_customers on resolved.customer_id = production_customers.id
),

final as (
    select
        *,
        has_staging_warning as has_warning,
        has_staging_error
        or is_duplicate
        or is_customer_orphan
        or is_customer_parent_rejected as is_rejected
    from checked
)

select * from final

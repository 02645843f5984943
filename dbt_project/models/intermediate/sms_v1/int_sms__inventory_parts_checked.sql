{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The inventory_parts of one run, each with its verdict: rejected (a staging error, or
-- an id shared with another row) or not, and its internal id. One row per
-- staged row. No other entity refers to them and they refer to none.
with

staged as (
    select * from {{ ref('stg_sms__inventory_parts') }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = 'inventory_parts'
),

row_status as (
    {{ sms_row_status('row_exceptions', ['external_part_id']) }}
),

-- A ragged record's fields, and a field with undecodable bytes, are no key.
keyed as (
    select
        staged.*,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_part_id, false)
                then staged.external_part_id
        end as external_id
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

checked as (
    select
        keyed.row_number,
        keyed.line_number,
        keyed.external_id,
        {{ sms_internal_id('inventory_parts', 'keyed.external_id') }} as id,
        keyed.has_staging_error,
        keyed.has_staging_warning,
        coalesce(id_counts.rows_with_id > 1, false) as is_duplicate,
        {{ sms_contract_columns('keyed', 'inventory_parts') }}
    from keyed
    left join id_counts on keyed.external_id = id_counts.external_id
),

final as (
    select
        *,
        has_staging_warning as has_warning,
        has_staging_error or is_duplicate as is_rejected
    from checked
)

select * from final

-- The exception report of the built run (the loader keeps every run's in the
-- registry). One row per (row, field, rule): the
-- row-level rules of staging, the cross-row rules of intermediate, and the
-- file-level findings of the loader (row_number 0, line_number 1: the header),
-- such as unknown_column.
with

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
),

cross_row_exceptions as (
    select * from {{ ref('int_sms__cross_row_exceptions') }}
),

run_problems as (
    select * from {{ source('loader_registry', 'run_problems') }}
    where run_id = {{ sms_run_id() }} and entity is not null
),

unioned as (
    select
        {{ sms_v1_exception_columns() }}
    from row_exceptions

    union all

    select
        {{ sms_v1_exception_columns() }}
    from cross_row_exceptions

    union all

    -- File-level findings are about the header: row 0, which is line 1; no value.
    select
        entity,
        0::bigint as row_number,
        1::bigint as line_number,
        coalesce(field, '') as field,
        rule,
        severity,
        null::text as value,
        message
    from run_problems
),

final as (
    select
        {{ sms_run_id() }}::bigint as run_id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        {{ sms_load_literal('load_id') }} as load_id,
        {{ sms_v1_exception_columns() }}
    from unioned
)

select * from final

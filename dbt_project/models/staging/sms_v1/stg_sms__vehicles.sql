-- The vehicles of one run (var run_id): one row per raw record it checks, values trimmed,
-- normalised and typed. A value that does not parse is NULL here and has a row
-- in stg_sms__vehicles_exceptions, which decides whether the row may load.
with

raw_vehicles as (
    {{ sms_v1_run_rows('vehicles') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_vehicles', 'vehicles') }}
),

typed as (
    select
        file_id,
        row_number,
        line_number,
        {{ sms_v1_typed_columns('vehicles') }}
    from cleaned
)

select * from typed

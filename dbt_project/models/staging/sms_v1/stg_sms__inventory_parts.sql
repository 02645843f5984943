-- The inventory_parts of one run (var run_id): one row per raw record it checks, values trimmed,
-- normalised and typed. A value that does not parse is NULL here and has a row
-- in stg_sms__inventory_parts_exceptions, which decides whether the row may load.
with

raw_inventory_parts as (
    {{ sms_v1_run_rows('inventory_parts') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_inventory_parts', 'inventory_parts') }}
),

typed as (
    select
        file_id,
        row_number,
        line_number,
        {{ sms_v1_typed_columns('inventory_parts') }}
    from cleaned
)

select * from typed

-- A table: its typed values (regexes, casts) are worked out while the other
-- entities' rules run, off the critical path, and int_sms__line_items_checked,
-- the longest model, then only reads them.
{{ config(materialized='table', unlogged=true) }}
-- The line_items of one run (var run_id): one row per raw record it checks, values trimmed,
-- normalised and typed. A value that does not parse is NULL here and has a row
-- in stg_sms__line_items_exceptions, which decides whether the row may load.
with

raw_line_items as (
    {{ sms_v1_run_rows('line_items') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_line_items', 'line_items') }}
),

typed as (
    select
        file_id,
        row_number,
        line_number,
        {{ sms_v1_typed_columns('line_items') }}
    from cleaned
)

select * from typed

-- A table, not a view: the entities' rules then run side by side on dbt's
-- threads instead of one after the other inside stg_sms__row_exceptions.
{{ config(materialized='table', unlogged=true) }}
-- Row-level rule violations in the line_items of one run (var run_id), one row per
-- (row, rule): computed from the raw text because a typed NULL cannot tell an
-- empty value from one that did not parse.
with

raw_line_items as (
    {{ sms_v1_run_rows('line_items') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_line_items', 'line_items') }}
),

exceptions as (
    {{ sms_v1_row_exceptions('cleaned', 'line_items') }}
)

select * from exceptions

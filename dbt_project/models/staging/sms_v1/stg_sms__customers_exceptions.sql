-- A table, not a view: the entities' rules then run side by side on dbt's
-- threads instead of one after the other inside stg_sms__row_exceptions.
{{ config(materialized='table', unlogged=true) }}
-- Row-level rule violations in the customers of one run (var run_id), one row per
-- (row, rule): computed from the raw text because a typed NULL cannot tell an
-- empty value from one that did not parse.
with

raw_customers as (
    {{ sms_v1_run_rows('customers') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_customers', 'customers') }}
),

exceptions as (
    {{ sms_v1_row_exceptions('cleaned', 'customers') }}
)

select * from exceptions

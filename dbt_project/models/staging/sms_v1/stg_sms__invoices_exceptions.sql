-- A table, not a view: the entities' rules then run side by side on dbt's
-- threads instead of one after the other inside stg_sms__row_exceptions.
{{ config(materialized='table', unlogged=true) }}
-- Row-level rule violations in the invoices of one run (var run_id), one row per
-- (row, rule): computed from the raw text because a typed NULL cannot tell an
-- empty value from one that did not parse.
with

raw_invoices as (
    {{ sms_v1_run_rows('invoices') }}
),

cleaned as (
    {{ sms_v1_cleaned('raw_invoices', 'invoices') }}
),

exceptions as (
    {{ sms_v1_row_exceptions('cleaned', 'invoices') }}
)

select * from exceptions

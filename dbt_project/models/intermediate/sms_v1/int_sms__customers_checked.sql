{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The customers of one run, each with its verdict and internal id (see the macro).
{{ sms_v1_checked_without_references('customers', 'external_customer_id') }}

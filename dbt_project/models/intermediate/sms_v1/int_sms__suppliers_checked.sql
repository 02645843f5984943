{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The suppliers of one run, each with its verdict and internal id (see the
-- macro). No other entity refers to them and they refer to none.
{{ sms_v1_checked_without_references('suppliers', 'external_supplier_id') }}

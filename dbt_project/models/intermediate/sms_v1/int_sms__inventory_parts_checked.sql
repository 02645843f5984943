{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The inventory parts of one run, each with its verdict and internal id (see the
-- macro). No other entity refers to them and they refer to none.
{{ sms_v1_checked_without_references('inventory_parts', 'external_part_id') }}

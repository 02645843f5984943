{#-
    The cross-row rules found by the *_checked models, as exception rows: one
    per (row, field, rule) broken. Each check names the entity, the flag
    column of its checked model, the contract field reported, the rule, its
    severity and the message (the field's value is appended).
-#}
{%- set checks = [
    ('customers', 'is_duplicate', 'external_customer_id', 'duplicate', 'error', 'appears in more than one row'),
    ('vehicles', 'is_duplicate', 'external_vehicle_id', 'duplicate', 'error', 'appears in more than one row'),
    ('vehicles', 'is_customer_orphan', 'external_customer_id', 'orphan', 'error',
        'is a customer neither in this load nor imported for the shop'),
    ('vehicles', 'is_customer_parent_rejected', 'external_customer_id', 'parent_rejected', 'error',
        'is a customer whose rows in this load were rejected'),
    ('invoices', 'is_duplicate', 'external_invoice_id', 'duplicate', 'error', 'appears in more than one row'),
    ('invoices', 'is_customer_orphan', 'external_customer_id', 'orphan', 'error',
        'is a customer neither in this load nor imported for the shop'),
    ('invoices', 'is_customer_parent_rejected', 'external_customer_id', 'parent_rejected', 'error',
        'is a customer whose rows in this load were rejected'),
    ('invoices', 'is_vehicle_orphan', 'external_vehicle_id', 'orphan', 'error',
        'is a vehicle neither in this load nor imported for the shop'),
    ('invoices', 'is_vehicle_parent_rejected', 'external_vehicle_id', 'parent_rejected', 'error',
        'is a vehicle whose rows in this load were rejected'),
    ('invoices', 'is_vehicle_owner_mismatch', 'external_vehicle_id', 'vehicle_owner_mismatch', 'warning',
        'is a vehicle of another customer'),
    ('line_items', 'is_duplicate', 'external_dataline_id', 'duplicate', 'error', 'appears in more than one row'),
    ('line_items', 'is_invoice_orphan', 'external_invoice_id', 'orphan', 'error',
        'is an invoice neither in this load nor imported for the shop'),
    ('line_items', 'is_invoice_parent_rejected', 'external_invoice_id', 'parent_rejected', 'error',
        'is an invoice whose rows in this load were rejected'),
    ('line_items', 'is_parent_line_orphan', 'external_parent_dataline_id', 'orphan', 'error',
        'is a line neither in this load nor imported for the shop'),
    ('line_items', 'is_parent_line_mismatch', 'external_parent_dataline_id', 'parent_mismatch', 'error',
        'is a line of another invoice'),
    ('line_items', 'is_on_cycle', 'external_parent_dataline_id', 'cycle', 'error',
        'leads back to this line: the line would be its own ancestor'),
    ('line_items', 'is_parent_line_rejected', 'external_parent_dataline_id', 'parent_rejected', 'error',
        'is, or hangs below, a line that was rejected or is on a cycle'),
    ('payments', 'is_duplicate', 'external_payment_id', 'duplicate', 'error', 'appears in more than one row'),
    ('payments', 'is_invoice_orphan', 'external_invoice_id', 'orphan', 'error',
        'is an invoice neither in this load nor imported for the shop'),
    ('payments', 'is_invoice_parent_rejected', 'external_invoice_id', 'parent_rejected', 'error',
        'is an invoice whose rows in this load were rejected'),
    ('inventory_parts', 'is_duplicate', 'external_part_id', 'duplicate', 'error', 'appears in more than one row'),
    ('suppliers', 'is_duplicate', 'external_supplier_id', 'duplicate', 'error', 'appears in more than one row'),
] -%}
-- Cross-row rule violations of one run (duplicate, orphan, parent_rejected,
-- parent_mismatch, cycle, vehicle_owner_mismatch), one row per (row, field, rule).
with

{% for entity in sms_v1_contract() %}
    {{ entity }}_checked as (
        select * from {{ ref('int_sms__' ~ entity ~ '_checked') }}
    ),
{% endfor %}

unioned as (
    {% for entity, flag, field, rule, severity, message in checks %}
        select
            {{ sms_sql_string(entity) }} as entity,
            row_number,
            line_number,
            {{ sms_sql_string(field) }} as field,
            {{ sms_sql_string(rule) }} as rule,
            {{ sms_sql_string(severity) }} as severity,
            {{ field }} as value,
            {{ sms_sql_string(field ~ ' ') }} || {{ field }} || {{ sms_sql_string(' ' ~ message) }} as message
        from {{ entity }}_checked
        where {{ flag }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
)

select
    {{ sms_v1_exception_columns() }}
from unioned

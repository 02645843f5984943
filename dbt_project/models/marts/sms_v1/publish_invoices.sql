-- The publish plan for prod_sms.invoices: the valid invoices, estimates and repair orders of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('invoices', [
    ('customer_id', 'uuid'),
    ('vehicle_id', 'uuid'),
    ('invoice_number', 'text'),
    ('document_type', 'text'),
    ('status', 'text'),
    ('invoice_date', 'date'),
    ('subtotal', 'numeric(14, 2)'),
    ('tax_total', 'numeric(14, 2)'),
    ('total', 'numeric(14, 2)'),
    ('odometer_in', 'bigint'),
]) }}

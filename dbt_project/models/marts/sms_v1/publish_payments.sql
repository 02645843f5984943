-- The publish plan for prod_sms.payments: the valid payments and refunds of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('payments', [
    ('invoice_id', 'uuid'),
    ('payment_date', 'date'),
    ('amount', 'numeric(14, 2)'),
    ('method', 'text'),
    ('reference', 'text'),
]) }}

-- The publish plan for prod_sms.suppliers: the valid suppliers of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('suppliers', [
    ('name', 'text'),
    ('phone', 'text'),
    ('email', 'text'),
    ('account_number', 'text'),
    ('address_line1', 'text'),
    ('city', 'text'),
    ('state', 'text'),
    ('postal_code', 'text'),
]) }}

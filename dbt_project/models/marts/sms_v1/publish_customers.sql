-- The publish plan for prod_sms.customers: the valid people and companies of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('customers', [
    ('first_name', 'text'),
    ('last_name', 'text'),
    ('company_name', 'text'),
    ('email', 'text'),
    ('phone', 'text'),
    ('address_line1', 'text'),
    ('address_line2', 'text'),
    ('city', 'text'),
    ('state', 'text'),
    ('postal_code', 'text'),
    ('source_created_at', 'timestamptz', 'created_at'),
]) }}

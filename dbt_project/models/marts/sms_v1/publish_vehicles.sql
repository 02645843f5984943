-- The publish plan for prod_sms.vehicles: the valid vehicles of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('vehicles', [
    ('customer_id', 'uuid'),
    ('vin', 'text'),
    ('year', 'integer'),
    ('make', 'text'),
    ('model', 'text'),
    ('trim', 'text'),
    ('color', 'text'),
    ('license_plate', 'text'),
    ('license_state', 'text'),
    ('odometer', 'bigint'),
]) }}

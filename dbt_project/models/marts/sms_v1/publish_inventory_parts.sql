-- The publish plan for prod_sms.inventory_parts: the valid stock parts of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('inventory_parts', [
    ('part_number', 'text'),
    ('description', 'text'),
    ('quantity_on_hand', 'numeric(24, 6)'),
    ('cost', 'numeric(14, 2)'),
    ('price', 'numeric(14, 2)'),
]) }}

-- The publish plan for prod_sms.line_items: the valid invoice lines of one run
-- (see the macro for what a plan holds).
{{ sms_v1_publish_plan('line_items', [
    ('invoice_id', 'uuid'),
    ('parent_line_item_id', 'uuid'),
    ('line_type', 'text'),
    ('description', 'text'),
    ('part_number', 'text'),
    ('quantity', 'numeric(24, 6)'),
    ('unit_price', 'numeric(14, 2)'),
    ('line_total', 'numeric(14, 2)'),
]) }}

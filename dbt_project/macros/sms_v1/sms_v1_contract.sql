{#-
    Generated from loader/contracts/sms_v1.yaml by `python -m loader.dbt.sources`; do not edit by hand.

    The sms_v1 columns and their validation rules, per entity, for the staging
    models; the only place in the dbt project that names them. Keys per column:
    type (id, text, int, decimal, money, date, datetime, email, phone, vin,
    enum), required, values (enum), default, min, max_years_ahead (upper bound
    relative to the current year, exclusive), nonzero, sum_of (the columns this
    total must add up to). The bounds of the column's type: max_length (id),
    lowest and highest (int), integer_digits and scale (decimal, money). Per
    entity, required_one_of: groups of columns of which at least one must be
    present, reported on report_field. Only `phone` typed columns get the
    short_phone warning; a phone number typed `text` in the contract is plain
    text.
-#}
{%- macro sms_v1_contract() -%}
    {% do return({
        'customers': {
            'columns': [
                {'name': 'external_customer_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'first_name', 'type': 'text'},
                {'name': 'last_name', 'type': 'text'},
                {'name': 'company_name', 'type': 'text'},
                {'name': 'email', 'type': 'email'},
                {'name': 'phone', 'type': 'phone'},
                {'name': 'address_line1', 'type': 'text'},
                {'name': 'address_line2', 'type': 'text'},
                {'name': 'city', 'type': 'text'},
                {'name': 'state', 'type': 'text'},
                {'name': 'postal_code', 'type': 'text'},
                {'name': 'created_at', 'type': 'datetime'},
            ],
            'required_one_of': [
                {'columns': ['last_name', 'company_name'], 'report_field': 'last_name'},
            ],
        },
        'vehicles': {
            'columns': [
                {'name': 'external_vehicle_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_customer_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'vin', 'type': 'vin'},
                {'name': 'year', 'type': 'int', 'lowest': -9223372036854775808, 'highest': 9223372036854775807, 'min': 1886, 'max_years_ahead': 2},
                {'name': 'make', 'type': 'text'},
                {'name': 'model', 'type': 'text'},
                {'name': 'trim', 'type': 'text'},
                {'name': 'color', 'type': 'text'},
                {'name': 'license_plate', 'type': 'text'},
                {'name': 'license_state', 'type': 'text'},
                {'name': 'odometer', 'type': 'int', 'lowest': -9223372036854775808, 'highest': 9223372036854775807, 'min': 0},
            ],
        },
        'invoices': {
            'columns': [
                {'name': 'external_invoice_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_customer_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_vehicle_id', 'type': 'id', 'max_length': 64},
                {'name': 'invoice_number', 'type': 'text', 'required': true},
                {'name': 'document_type', 'type': 'enum', 'values': ['estimate', 'repair_order', 'invoice'], 'default': 'invoice'},
                {'name': 'status', 'type': 'enum', 'values': ['open', 'closed', 'void'], 'required': true},
                {'name': 'invoice_date', 'type': 'date', 'required': true},
                {'name': 'subtotal', 'type': 'money', 'integer_digits': 12, 'scale': 2},
                {'name': 'tax_total', 'type': 'money', 'integer_digits': 12, 'scale': 2},
                {'name': 'total', 'type': 'money', 'integer_digits': 12, 'scale': 2, 'sum_of': ['subtotal', 'tax_total']},
                {'name': 'odometer_in', 'type': 'int', 'lowest': -9223372036854775808, 'highest': 9223372036854775807, 'min': 0},
            ],
        },
        'line_items': {
            'columns': [
                {'name': 'external_dataline_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_invoice_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_parent_dataline_id', 'type': 'id', 'max_length': 64},
                {'name': 'line_type', 'type': 'enum', 'values': ['labor', 'part', 'fee', 'sublet', 'comment'], 'required': true},
                {'name': 'description', 'type': 'text'},
                {'name': 'part_number', 'type': 'text'},
                {'name': 'quantity', 'type': 'decimal', 'integer_digits': 18, 'scale': 6},
                {'name': 'unit_price', 'type': 'money', 'integer_digits': 12, 'scale': 2},
                {'name': 'line_total', 'type': 'money', 'integer_digits': 12, 'scale': 2},
            ],
        },
        'payments': {
            'columns': [
                {'name': 'external_payment_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'external_invoice_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'payment_date', 'type': 'date', 'required': true},
                {'name': 'amount', 'type': 'money', 'integer_digits': 12, 'scale': 2, 'required': true, 'nonzero': true},
                {'name': 'method', 'type': 'enum', 'values': ['cash', 'check', 'card', 'ach', 'other'], 'required': true},
                {'name': 'reference', 'type': 'text'},
            ],
        },
        'inventory_parts': {
            'columns': [
                {'name': 'external_part_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'part_number', 'type': 'text', 'required': true},
                {'name': 'description', 'type': 'text'},
                {'name': 'quantity_on_hand', 'type': 'decimal', 'integer_digits': 18, 'scale': 6},
                {'name': 'cost', 'type': 'money', 'integer_digits': 12, 'scale': 2},
                {'name': 'price', 'type': 'money', 'integer_digits': 12, 'scale': 2},
            ],
        },
        'suppliers': {
            'columns': [
                {'name': 'external_supplier_id', 'type': 'id', 'max_length': 64, 'required': true},
                {'name': 'name', 'type': 'text', 'required': true},
                {'name': 'phone', 'type': 'text'},
                {'name': 'email', 'type': 'email'},
                {'name': 'account_number', 'type': 'text'},
                {'name': 'address_line1', 'type': 'text'},
                {'name': 'city', 'type': 'text'},
                {'name': 'state', 'type': 'text'},
                {'name': 'postal_code', 'type': 'text'},
            ],
        },
    }) %}
{%- endmacro -%}

{#- The characters trimmed from both ends of every value: Unicode's White_Space. -#}
{%- macro sms_v1_white_space() -%}
    e'\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000'
{%- endmacro -%}

{#-
    The row-level validation rules of the sms_v1 contract, one macro per rule.
    Each takes a column spec from sms_v1_contract() (and, for rules that look
    at other columns, the whole entity spec) and returns either none (the
    rule does not apply to that column) or a dict: the rule code, its
    severity, a SQL condition that is true when a row breaks the rule, and a
    SQL message. Conditions read the trimmed text columns of the `cleaned`
    relation built by sms_v1_cleaned(), where an empty value is NULL.
    Cross-row rules (duplicate, orphan, parent_*, cycle,
    vehicle_owner_mismatch) need other rows and belong to intermediate models.
-#}

{%- macro sms_rule_required(column) -%}
    {% if column.required %}
        {% do return({
            'rule': 'required', 'severity': 'error',
            'violated': '"' ~ column.name ~ '" is null',
            'message': "'" ~ column.name ~ " is required'",
        }) %}
    {% endif %}
    {% do return(none) %}
{%- endmacro -%}

{#- The contract's "at least one of": reported once, on the field it names. #}
{%- macro sms_rule_required_one_of(group) -%}
    {% set checks = [] %}
    {% for name in group.columns %}
        {% do checks.append('"' ~ name ~ '" is null') %}
    {% endfor %}
    {% do return({
        'rule': 'required', 'severity': 'error',
        'violated': checks | join(' and '),
        'message': "'one of " ~ group.columns | join(', ') ~ " is required'",
    }) %}
{%- endmacro -%}

{%- macro sms_rule_type(column) -%}
    {% set value = '"' ~ column.name ~ '"' %}
    {% if column.type in ('int', 'decimal', 'money') %}
        {% set valid = sms_is_int(value) if column.type == 'int' else sms_is_decimal(value) %}
        {% set expected = {
            'int': 'an integer',
            'decimal': 'a decimal number (digits, an optional - and .)',
            'money': 'an amount (digits, an optional - and ., no currency symbol)',
        }[column.type] %}
    {% elif column.type == 'date' %}
        {% set valid = sms_is_date(value) %}
        {% set expected = 'a date (' ~ sms_date_format().label ~ ')' %}
    {% elif column.type == 'datetime' %}
        {% set valid = sms_is_datetime(value) %}
        {% set expected = 'an ISO 8601 date-time' %}
    {% else %}
        {% do return(none) %}
    {% endif %}
    {% do return({
        'rule': 'type', 'severity': 'error',
        'violated': value ~ ' is not null and not ' ~ valid,
        'message': "'" ~ column.name ~ " is not " ~ expected ~ "'",
    }) %}
{%- endmacro -%}

{%- macro sms_rule_format(column) -%}
    {% set value = '"' ~ column.name ~ '"' %}
    {% if column.type == 'id' %}
        {% set valid = 'length(' ~ value ~ ') <= ' ~ column.max_length %}
        {% set expected = 'is longer than ' ~ column.max_length ~ ' characters' %}
    {% elif column.type == 'email' %}
        {% set valid = sms_is_email(value) %}
        {% set expected = 'is not a valid email address' %}
    {% elif column.type == 'vin' %}
        {% set valid = sms_is_vin(value) %}
        {% set expected = 'is not 17 characters of A-H, J-N, P, R-Z, 0-9' %}
    {% elif column.type in ('decimal', 'money') %}
        {# Only a value that parses as a decimal can have too many decimals; others are type errors. #}
        {% set valid = '(not ' ~ sms_is_decimal(value) ~ ' or ' ~ sms_has_scale(value, column.scale) ~ ')' %}
        {% set expected = 'has more than ' ~ column.scale ~ ' decimal places' %}
    {% else %}
        {% do return(none) %}
    {% endif %}
    {% do return({
        'rule': 'format', 'severity': 'error',
        'violated': value ~ ' is not null and not ' ~ valid,
        'message': "'" ~ column.name ~ " " ~ expected ~ "'",
    }) %}
{%- endmacro -%}

{#-
    Bounds apply to values that parse; others already have a type error.
    Numbers have their type's bounds (see sms_v1_contract()) besides the
    column's own: the typed value is NULL outside them, so they are checked
    on the text. max_years_ahead is exclusive: 2 allows up to next calendar
    year + 1.
-#}
{%- macro sms_rule_range(column) -%}
    {% set value = '"' ~ column.name ~ '"' %}
    {% set typed = sms_typed_value(column) %}
    {% set bounds = [] %}
    {% set limits = [] %}
    {% set digits = [] %}
    {% if column.type == 'int' %}
        {% do bounds.append(sms_int_out_of_bounds(value, column)) %}
    {% elif column.type in ('decimal', 'money') %}
        {% do bounds.append(sms_number_out_of_bounds(value, column)) %}
        {% do digits.append('have at most ' ~ column.integer_digits ~ ' digits before the decimal point') %}
    {% endif %}
    {% if column.get('min') is not none %}
        {% do bounds.append(typed ~ ' < ' ~ column.min) %}
    {% endif %}
    {% if column.type == 'int' or column.get('min') is not none %}
        {% do limits.append('at least ' ~ ([column.get('min'), column.get('lowest')] | reject('none') | max)) %}
    {% endif %}
    {% if column.get('max_years_ahead') is not none %}
        {% do bounds.append(typed ~ ' >= extract(year from current_date) + ' ~ column.max_years_ahead) %}
        {% do limits.append('below the current year + ' ~ column.max_years_ahead) %}
    {% elif column.type == 'int' %}
        {% do limits.append('at most ' ~ column.highest) %}
    {% endif %}
    {% if column.nonzero %}
        {% do bounds.append(typed ~ ' = 0') %}
        {% do limits.append('non-zero') %}
    {% endif %}
    {% if not bounds %}
        {% do return(none) %}
    {% endif %}
    {% set musts = (['be ' ~ limits | join(' and ')] if limits else []) + digits %}
    {% do return({
        'rule': 'range', 'severity': 'error',
        'violated': 'coalesce(' ~ bounds | join(' or ') ~ ', false)',
        'message': "'" ~ column.name ~ " must " ~ musts | join(' and ') ~ "'",
    }) %}
{%- endmacro -%}

{%- macro sms_rule_enum(column) -%}
    {% if column.type != 'enum' %}
        {% do return(none) %}
    {% endif %}
    {% do return({
        'rule': 'enum', 'severity': 'error',
        'violated': sms_ascii_lower('"' ~ column.name ~ '"') ~ ' not in (' ~ sms_sql_list(column['values']) ~ ')',
        'message': "'" ~ column.name ~ " is not one of " ~ column['values'] | join(', ') ~ "'",
    }) %}
{%- endmacro -%}

{#-
    A wrong check digit is only worth a warning on a VIN that is otherwise
    well-formed; a case, so that the digit (and its casts) is only worked out
    for such a VIN, whatever order PostgreSQL evaluates a WHERE in.
-#}
{%- macro sms_rule_vin_check_digit(column) -%}
    {% if column.type != 'vin' %}
        {% do return(none) %}
    {% endif %}
    {% set value = '"' ~ column.name ~ '"' %}
    {% do return({
        'rule': 'vin_check_digit', 'severity': 'warning',
        'violated': 'case when ' ~ sms_is_vin(value) ~ ' then substr(upper(' ~ value ~ '), 9, 1) <> '
            ~ sms_vin_check_digit(value) ~ ' end',
        'message': "'" ~ column.name ~ " check digit (position 9) should be ' || " ~ sms_vin_check_digit(value),
    }) %}
{%- endmacro -%}

{%- macro sms_rule_short_phone(column) -%}
    {% if column.type != 'phone' %}
        {% do return(none) %}
    {% endif %}
    {% set value = '"' ~ column.name ~ '"' %}
    {% do return({
        'rule': 'short_phone', 'severity': 'warning',
        'violated': value ~ ' is not null and length(regexp_replace(' ~ value ~ ", '[^0-9]', '', 'g')) < 7",
        'message': "'" ~ column.name ~ " has fewer than 7 digits'",
    }) %}
{%- endmacro -%}

{#-
    A total that should equal the sum of other money columns; checked only
    when the total and the first part parse, a missing later part counting
    as 0 (the contract's tax_total). Differences up to 0.01 are rounding.
-#}
{%- macro sms_rule_total_mismatch(column, entity_spec) -%}
    {% if not column.sum_of %}
        {% do return(none) %}
    {% endif %}
    {% set by_name = {} %}
    {% for other in entity_spec.columns %}
        {% do by_name.update({other.name: other}) %}
    {% endfor %}
    {% set total = sms_typed_value(column) %}
    {% set first = sms_typed_value(by_name[column.sum_of[0]]) %}
    {% set terms = [first] %}
    {% set present = [total ~ ' is not null', first ~ ' is not null'] %}
    {% for name in column.sum_of[1:] %}
        {% set part = sms_typed_value(by_name[name]) %}
        {% do terms.append('coalesce(' ~ part ~ ', 0)') %}
        {# A part that is there but does not parse has its own error; no guess at the sum. #}
        {% do present.append('("' ~ name ~ '" is null or ' ~ part ~ ' is not null)') %}
    {% endfor %}
    {% set expected = terms | join(' + ') %}
    {% do return({
        'rule': 'total_mismatch', 'severity': 'warning',
        'violated': present | join(' and ') ~ ' and abs(' ~ total ~ ' - (' ~ expected ~ ')) > 0.01',
        'message': "'" ~ column.name ~ " differs from " ~ column.sum_of | join(' + ') ~ " = ' || (" ~ expected ~ ")::text",
    }) %}
{%- endmacro -%}

{%- macro sms_sql_list(values) -%}
    {%- for value in values -%}
        {{ sms_sql_string(value) }}{{ ', ' if not loop.last }}
    {%- endfor -%}
{%- endmacro -%}

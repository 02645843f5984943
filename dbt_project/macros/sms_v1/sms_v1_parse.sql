{#-
    Value parsers shared by the staging models and the row exceptions. Each
    takes a SQL expression holding an already trimmed text value (NULL when
    empty) and never raises, whatever the text: a partner's bad value must
    become an exception row, not a failed build. So every cast is guarded by
    a regex or a calendar check evaluated inside a `case`, which PostgreSQL
    guarantees to evaluate before the branch that casts.
-#}

{#-
    Trimmed of Unicode's White_Space characters (sms_v1_white_space(), rendered
    from loader/contracts/model.py), listed rather than left to the database,
    whose idea of a space depends on its locale; NULL when nothing is left.
-#}
{%- macro sms_clean(column_name) -%}
    nullif(btrim("{{ column_name }}", {{ sms_v1_white_space() }}), '')
{%- endmacro -%}

{#-
    A-Z to a-z and nothing else: lower() follows the database's locale, which
    turns İ and the Kelvin sign into ASCII letters (and, in a Turkish locale,
    I into ı), so one address could become another. In the C collation it
    changes ASCII letters only, at a tenth of the cost of translate().
-#}
{%- macro sms_ascii_lower(value) -%}
    lower({{ value }} collate "C")
{%- endmacro -%}

{#- Any number of digits: the type's bounds are the range rule's, see sms_int_out_of_bounds(). #}
{%- macro sms_is_int(value) -%}
    ({{ value }} ~ '^-?[0-9]+$')
{%- endmacro -%}

{#-
    Whether an integer lies outside its type's bounds (`column`: lowest,
    highest); NULL for no value or one that is no integer. Leading zeros do
    not count. A value too short to reach either bound is decided by its
    length alone; only a longer one is compared as a numeric, and only when
    it has few enough digits for numeric to hold it.
-#}
{%- macro sms_int_out_of_bounds(value, column) -%}
    {%- set magnitudes = [-column.lowest, column.highest] -%}
    {#- Every value of this many characters or fewer is inside both bounds. -#}
    {%- set safe_length = ((magnitudes | min) + 1) | string | length - 1 -%}
    case when length({{ value }}) > {{ safe_length }} and {{ sms_is_int(value) }} then
        case
            when length(ltrim({{ value }}, '-0')) > {{ (magnitudes | max) | string | length }} then true
            else ({{ value }})::numeric not between {{ column.lowest }} and {{ column.highest }}
        end
    end
{%- endmacro -%}

{%- macro sms_is_decimal(value) -%}
    ({{ value }} ~ '^-?([0-9]+|[0-9]*\.[0-9]+)$')
{%- endmacro -%}

{#- At most `scale` digits after the point, for a value that parses as a decimal. #}
{%- macro sms_has_scale(value, scale) -%}
    (strpos({{ value }}, '.') = 0 or length({{ value }}) - strpos({{ value }}, '.') <= {{ scale }})
{%- endmacro -%}

{#-
    A decimal with at most `scale` decimals, in one match: the same as
    sms_is_decimal() and sms_has_scale() together, at half the cost.
-#}
{%- macro sms_is_number_with_scale(value, scale) -%}
    {%- if scale == 0 -%}
        ({{ value }} ~ '^-?[0-9]+$')
    {%- else -%}
        ({{ value }} ~ '^-?([0-9]+|[0-9]*\.[0-9]{1,{{ scale }}})$')
    {%- endif -%}
{%- endmacro -%}

{#-
    Whether a decimal has more digits before the point than its type holds
    (`column`: integer_digits), leading zeros not counted; NULL for no value
    or one that is no decimal. Decided by length alone for short values.
-#}
{%- macro sms_number_out_of_bounds(value, column) -%}
    case when length({{ value }}) > {{ column.integer_digits }} and {{ sms_is_decimal(value) }} then
        length(split_part(ltrim({{ value }}, '-0'), '.', 1)) > {{ column.integer_digits }}
    end
{%- endmacro -%}

{#-
    How dates are written: ISO 8601 unless the partner's strftime format is
    given as `date_format` (for example %m/%d/%Y; see sms_load_context). Returns the regex that
    captures the parts, which capture group holds the year, month and day,
    the equivalent PostgreSQL to_date() pattern and a label for messages.
-#}
{%- macro sms_date_format() -%}
    {% set strftime = sms_load_context()['date_format'] %}
    {#
        partners.yml only accepts formats holding a day, a month and a
        four-digit year, so one without a directive (such as sqlfluff's
        stand-in for var()) is read as ISO. ISO 8601 insists on two-digit
        months and days, unlike strptime.
    #}
    {% if not strftime or '%' not in strftime or strftime == '%Y-%m-%d' %}
        {% do return({
            'regex': '^([0-9]{4})-([0-9]{2})-([0-9]{2})$',
            'pg_pattern': 'YYYY-MM-DD',
            'parts': {'year': 1, 'month': 2, 'day': 3},
            'label': 'YYYY-MM-DD',
        }) %}
    {% endif %}
    {% set directives = {
        'Y': ('([0-9]{4})', 'YYYY', 'year'),
        'm': ('([0-9]{1,2})', 'MM', 'month'),
        'd': ('([0-9]{1,2})', 'DD', 'day'),
    } %}
    {% set ns = namespace(regex='^', pg_pattern='', group=0, parts={}, directive=false) %}
    {% for char in strftime %}
        {% if ns.directive %}
            {% if char not in directives %}
                {% do exceptions.raise_compiler_error(
                    "date_format " ~ strftime ~ ": only %Y, %m and %d are supported"
                ) %}
            {% endif %}
            {% set ns.group = ns.group + 1 %}
            {% set ns.regex = ns.regex ~ directives[char][0] %}
            {% set ns.pg_pattern = ns.pg_pattern ~ directives[char][1] %}
            {% do ns.parts.update({directives[char][2]: ns.group}) %}
            {% set ns.directive = false %}
        {% elif char == '%' %}
            {% set ns.directive = true %}
        {% else %}
            {# Punctuation is escaped for the regex; letters are quoted for to_date. #}
            {% set ns.regex = ns.regex ~ (char if char.isalnum() or char == ' ' else '\\' ~ char) %}
            {% set ns.pg_pattern = ns.pg_pattern ~ ('"' ~ char ~ '"' if char.isalpha() else char) %}
        {% endif %}
    {% endfor %}
    {% do return({
        'regex': ns.regex ~ '$',
        'pg_pattern': ns.pg_pattern,
        'parts': ns.parts,
        'label': strftime,
    }) %}
{%- endmacro -%}

{%- macro sms_sql_string(text) -%}
    '{{ text | replace("'", "''") }}'
{%- endmacro -%}

{#-
    A calendar check in plain arithmetic: casting '2024-02-30' would raise,
    and make_date() raises too, so the day is compared with the month's length.
-#}
{%- macro sms_is_calendar_date(year, month, day) -%}
    coalesce(
        {{ year }} between 1 and 9999
        and {{ month }} between 1 and 12
        and {{ day }} between 1 and case
            when {{ month }} in (4, 6, 9, 11) then 30
            when {{ month }} <> 2 then 31
            when ({{ year }} % 4 = 0 and {{ year }} % 100 <> 0) or {{ year }} % 400 = 0 then 29
            else 28
        end,
        false
    )
{%- endmacro -%}

{#-
    The calendar check needs the date's parts. ISO dates have them at fixed
    places, so substr() takes them once the cheap `~` match has passed; a
    partner format with one-or-two-digit parts needs regexp_match, called
    once per value in a scalar subquery (it is costly, and capture groups
    used three times would run it three times).
-#}
{%- macro sms_is_date(value) -%}
    {%- set fmt = sms_date_format() -%}
    {%- if fmt.pg_pattern == 'YYYY-MM-DD' -%}
        case when {{ value }} ~ {{ sms_sql_string(fmt.regex) }} then {{ sms_is_calendar_date(
            'substr(' ~ value ~ ', 1, 4)::int', 'substr(' ~ value ~ ', 6, 2)::int', 'substr(' ~ value ~ ', 9, 2)::int'
        ) }} else false end
    {%- else -%}
        case when {{ value }} ~ {{ sms_sql_string(fmt.regex) }} then (
            select {{ sms_is_calendar_date(
                'parts.m[' ~ fmt.parts.year ~ ']::int',
                'parts.m[' ~ fmt.parts.month ~ ']::int',
                'parts.m[' ~ fmt.parts.day ~ ']::int'
            ) }}
            from (select regexp_match({{ value }}, {{ sms_sql_string(fmt.regex) }}) as m) as parts
        ) else false end
    {%- endif -%}
{%- endmacro -%}

{%- macro sms_to_date(value) -%}
    {%- set fmt = sms_date_format() -%}
    case when {{ sms_is_date(value) }} then to_date({{ value }}, {{ sms_sql_string(fmt.pg_pattern) }}) end
{%- endmacro -%}

{#-
    ISO 8601 date-time: a date, optionally a time, optionally Z or a +hh[:mm]
    offset. Hours, minutes, seconds and the offset are range-checked by the
    pattern itself (PostgreSQL accepts offsets up to 15:59); the date part
    sits at fixed places for the calendar check.
-#}
{%- macro sms_datetime_regex() -%}
    '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?)?(Z|[+-](0[0-9]|1[0-5])(:?[0-5][0-9])?)?$'
{%- endmacro -%}

{%- macro sms_is_datetime(value) -%}
    case when {{ value }} ~ {{ sms_datetime_regex() }} then {{ sms_is_calendar_date(
        'substr(' ~ value ~ ', 1, 4)::int', 'substr(' ~ value ~ ', 6, 2)::int', 'substr(' ~ value ~ ', 9, 2)::int'
    ) }} else false end
{%- endmacro -%}


{#- A date-time without an offset is read as UTC, whatever the session's time zone. #}
{%- macro sms_to_datetime(value) -%}
    case
        when not {{ sms_is_datetime(value) }} then null
        when {{ value }} ~ '(Z|[+-][0-9]{2}(:?[0-9]{2})?)$' then ({{ value }})::timestamptz
        else ({{ value }})::timestamp at time zone 'UTC'
    end
{%- endmacro -%}

{#-
    ASCII letters of either case (the stored address is lower-cased with
    sms_ascii_lower()), dot-separated atoms in the local part (no leading,
    trailing or doubled dot), and a domain of labels with a top-level domain
    of letters.
-#}
{%- macro sms_is_email(value) -%}
    ({{ value }} ~ '^[A-Za-z0-9_%+''-]+(\.[A-Za-z0-9_%+''-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}$')
{%- endmacro -%}

{#- 17 characters; I, O and Q are never used, so they cannot be mistaken for 1 and 0. #}
{%- macro sms_is_vin(value) -%}
    {#- The same as ~ '^[A-HJ-NPR-Z0-9]{17}$', which PostgreSQL's regex engine runs at half the speed. #}
    (upper({{ value }}) !~ '[^A-HJ-NPR-Z0-9]' and length(upper({{ value }})) = 17)
{%- endmacro -%}

{#-
    ISO 3779 check digit (position 9) of a well-formed VIN: letters take their
    transliteration values, each position its weight, and the sum modulo 11
    is the digit (10 is written X).
-#}
{%- macro sms_vin_check_digit(value) -%}
    {%- set weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2] -%}
    {#- The transliteration is taken once per value, not once per position. #}
    (
        select substr('0123456789X', ((
            {%- for weight in weights %}{% if weight %}
            {{ '+ ' if not loop.first }}substr(vin_check.digits, {{ loop.index }}, 1)::int * {{ weight }}
            {%- endif %}{% endfor %}
        ) % 11) + 1, 1)
        from (
            -- The limit (it is one row anyway) keeps PostgreSQL from merging the
            -- subquery into the sum, which would repeat the slow translate() per position.
            select translate(upper({{ value }}), 'ABCDEFGHJKLMNPRSTUVWXYZ', '12345678123457923456789') as digits
            limit 1
        ) as vin_check
    )
{%- endmacro -%}

{#- Digits only, a leading + kept: how phones are stored. #}
{%- macro sms_phone_digits(value) -%}
    {%- set digits %}regexp_replace({{ value }}, '[^0-9]', '', 'g'){% endset -%}
    case
        when {{ digits }} = '' then null
        when {{ value }} like '+%' then '+' || {{ digits }}
        else {{ digits }}
    end
{%- endmacro -%}

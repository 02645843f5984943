{#-
    Builders of the staging models: which raw rows a run reads, the cleaned
    text of each contract column, its typed value, and the row exceptions.
    They loop over sms_v1_contract(), so a column or rule is added there once.
-#}

{#-
    The raw rows of the file a run used for an entity. Raw tables hold every
    file ever landed; an identical rerun points at the same file_id, so the
    run registry, not the load key, says which rows belong to a run.
-#}
{%- macro sms_v1_file_rows(entity) -%}
    select *
    from {{ source('raw_sms_v1', entity) }}
    where _file_id = (
        select run_files.file_id
        from {{ source('loader_registry', 'run_files') }} as run_files
        where run_files.run_id = {{ sms_run_id() }} and run_files.entity = {{ sms_sql_string(entity) }}
    )
{%- endmacro -%}

{#-
    The rows of that file the run checks: all of them, unless the loader found
    rows identical to rows the shop's previous run accepted without a remark
    (loader/publish/unchanged_rows.py); those are carried over as valid and
    unchanged, and run_files.checked_rows lists the others. Its row numbers
    are unnested into a set that PostgreSQL hashes once: a multirange tested
    row by row would be read from TOAST again for every row.
-#}
{%- macro sms_v1_run_rows(entity) -%}
    {%- set this_file -%}
        run_files.run_id = {{ sms_run_id() }} and run_files.entity = {{ sms_sql_string(entity) }}
    {%- endset %}
    {{ sms_v1_file_rows(entity) }}
    and (
        (
            select run_files.checked_rows is null
            from {{ source('loader_registry', 'run_files') }} as run_files
            where {{ this_file }}
        )
        or _row_number in (
            select generate_series(lower(checked.row_range), upper(checked.row_range) - 1)
            from {{ source('loader_registry', 'run_files') }} as run_files
            cross join lateral unnest(run_files.checked_rows) as checked (row_range)
            where {{ this_file }}
        )
    )
{%- endmacro -%}

{#-
    Lineage plus every contract column trimmed, an empty value as NULL, and
    the columns an encoding problem makes untrustworthy.
-#}
{%- macro sms_v1_cleaned(relation, entity) -%}
    select
        _file_id as file_id,
        _row_number as row_number,
        _line_number as line_number,
        _problem as problem,
        _raw_record as raw_record,
        case
            when _problem = 'encoding' then string_to_array(_problem_detail, ',')
            else array[]::text []
        end as encoding_fields,
        {%- for column in sms_v1_contract()[entity].columns %}
        {{ sms_clean(column.name) }} as "{{ column.name }}"{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ relation }}
{%- endmacro -%}

{#-
    The stored value of a cleaned column: normalised, typed, NULL when it does
    not parse or lies outside its type's bounds, so that no cast can fail.
-#}
{%- macro sms_typed_value(column) -%}
    {%- set value = '"' ~ column.name ~ '"' -%}
    {%- if column.type == 'int' -%}
        case
            when {{ sms_is_int(value) }} and not coalesce({{ sms_int_out_of_bounds(value, column) }}, false)
                then ({{ value }})::bigint
        end
    {%- elif column.type in ('decimal', 'money') -%}
        {#- The production column's type: every amount gets its scale (10.5 is stored 10.50). #}
        case
            when
                {{ sms_is_number_with_scale(value, column.scale) }}
                and not coalesce({{ sms_number_out_of_bounds(value, column) }}, false)
                then ({{ value }})::{{ sms_numeric_type(column) }}
        end
    {%- elif column.type == 'date' -%}
        {{ sms_to_date(value) }}
    {%- elif column.type == 'datetime' -%}
        {{ sms_to_datetime(value) }}
    {%- elif column.type == 'email' -%}
        {{ sms_ascii_lower(value) }}
    {%- elif column.type == 'vin' -%}
        upper({{ value }})
    {%- elif column.type == 'phone' -%}
        {{ sms_phone_digits(value) }}
    {%- elif column.type == 'enum' -%}
        case
            when {{ sms_ascii_lower(value) }} in ({{ sms_sql_list(column['values']) }}) then {{ sms_ascii_lower(value) }}
            {%- if column.default %}
            when {{ value }} is null then {{ sms_sql_string(column.default) }}
            {%- endif %}
        end
    {%- else -%}
        {{ value }}
    {%- endif -%}
{%- endmacro -%}

{#- numeric(p, s) of a decimal or money column: what its type's bounds let through. #}
{%- macro sms_numeric_type(column) -%}
    numeric({{ column.integer_digits + column.scale }}, {{ column.scale }})
{%- endmacro -%}

{%- macro sms_v1_typed_columns(entity) -%}
    {%- for column in sms_v1_contract()[entity].columns %}
        {{ sms_typed_value(column) }} as "{{ column.name }}"{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro -%}

{#-
    One row per (row, rule) broken, for the row-level rules. A ragged record's
    fields cannot be trusted, so it gets that rule only; a field with
    undecodable bytes gets `encoding` and no other rule.

    Almost every row breaks nothing, so the rules are not run as one scan of
    the rows per rule: `suspect` keeps, in one pass, the rows with a problem
    or a broken rule (every rule's condition or'ed, or a cheaper screen that
    is true whenever one of them is), and only those few rows go through the
    per-rule selects, which decide exactly as before.
-#}
{%- macro sms_v1_row_exceptions(relation, entity) -%}
    {%- set spec = sms_v1_contract()[entity] %}
    {%- set screens = [] %}
    {%- for group in spec.get('required_one_of', []) %}
        {%- do screens.append(sms_rule_required_one_of(group).violated) %}
    {%- endfor %}
    {%- for column in spec.columns %}
        {%- for check in sms_v1_column_checks(column, spec) %}
            {%- if column.type in ('decimal', 'money') and check.rule in ('type', 'format') %}
                {%- if check.rule == 'type' %}
                    {#- One match tells a well-formed number from a type or a format error. #}
                    {%- do screens.append('"' ~ column.name ~ '" is not null and not '
                        ~ sms_is_number_with_scale('"' ~ column.name ~ '"', column.scale)) %}
                {%- endif %}
            {%- else %}
                {%- do screens.append(check.violated) %}
            {%- endif %}
        {%- endfor %}
    {%- endfor %}
    with suspect as materialized (
        select *
        from {{ relation }}
        where
            problem is not null
            {%- for screen in screens %}
            or coalesce({{ screen }}, false)
            {%- endfor %}
    )

    select
        {{ sms_sql_string(entity) }} as entity,
        row_number,
        line_number,
        '' as field,
        'ragged' as rule,
        'error' as severity,
        raw_record as value,
        'the record has more or fewer fields than the header' as message
    from suspect
    where problem = 'ragged'

    union all

    select
        {{ sms_sql_string(entity) }} as entity,
        cleaned.row_number,
        cleaned.line_number,
        bad.field,
        'encoding' as rule,
        'error' as severity,
        case bad.field
            {%- for column in spec.columns %}
            when {{ sms_sql_string(column.name) }} then cleaned."{{ column.name }}"
            {%- endfor %}
        end as value,
        bad.field || ' has bytes that do not decode in the declared encoding' as message
    from suspect as cleaned
    cross join lateral unnest(cleaned.encoding_fields) as bad (field)

    {%- for group in spec.get('required_one_of', []) %}
    {%- set check = sms_rule_required_one_of(group) %}

    union all

    {{ sms_v1_exception_select('suspect', entity, group.report_field, check, 'null') }}
        and not encoding_fields && array[{{ sms_sql_list(group.columns) }}]
    {%- endfor %}

    {%- for column in spec.columns %}
    {%- for check in sms_v1_column_checks(column, spec) %}

    union all

    {{ sms_v1_exception_select('suspect', entity, column.name, check, '"' ~ column.name ~ '"') }}
        and not {{ sms_sql_string(column.name) }} = any(encoding_fields)
    {%- endfor %}
    {%- endfor %}
{%- endmacro -%}

{#- The row-level rules that apply to a column, in report order. -#}
{%- macro sms_v1_column_checks(column, spec) -%}
    {%- set checks = [
        sms_rule_required(column),
        sms_rule_type(column),
        sms_rule_format(column),
        sms_rule_range(column),
        sms_rule_enum(column),
        sms_rule_vin_check_digit(column),
        sms_rule_short_phone(column),
        sms_rule_total_mismatch(column, spec),
    ] %}
    {%- do return(checks | select | list) -%}
{%- endmacro -%}

{%- macro sms_v1_exception_select(relation, entity, field, check, value) -%}
    select
        {{ sms_sql_string(entity) }} as entity,
        row_number,
        line_number,
        {{ sms_sql_string(field) }} as field,
        {{ sms_sql_string(check.rule) }} as rule,
        {{ sms_sql_string(check.severity) }} as severity,
        {{ value }} as value,
        {{ check.message }} as message
    from {{ relation }}
    where problem is distinct from 'ragged'
        and ({{ check.violated }})
{%- endmacro -%}

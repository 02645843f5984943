{#-
    The load being transformed. By hand, from vars:
    dbt build --vars '{run_id: 42, partner_id: acme, shop_id: shop-1, load_id: 2025-08-22_a}'.
    From the loader, from the worker slot's row of loader_registry.build_context
    (slot LOADER_DBT_SLOT, default 1), which it writes before each build of
    that slot: vars that change
    every load would make dbt parse the whole project again each time, about
    4 s, while a table read at run time leaves the parse cached. Without vars
    and without a row, there is no load to validate, which is an error.
    Values are pasted into SQL, so each is checked again here (the loader
    already refused anything else) before it becomes a quoted literal.
-#}
{%- macro sms_load_context() -%}
    {%- set names = ['run_id', 'partner_id', 'shop_id', 'shop_key', 'load_id', 'date_format'] %}
    {%- if var('run_id', none) is not none or not execute %}
        {%- set context = {} %}
        {%- for name in names %}
            {%- do context.update({name: var(name, none)}) %}
        {%- endfor %}
        {%- do return(context) %}
    {%- endif %}
    {%- set slot = env_var('LOADER_DBT_SLOT', '1') %}
    {%- if not slot.isdigit() %}
        {% do exceptions.raise_compiler_error("LOADER_DBT_SLOT must be a whole number, got " ~ slot) %}
    {%- endif %}
    {%- set rows = run_query(
        'select ' ~ names | join(', ') ~ ' from loader_registry.build_context where slot = ' ~ slot
    ) %}
    {%- if rows | length != 1 %}
        {% do exceptions.raise_compiler_error(
            "no load to validate: pass --vars '{run_id: N, partner_id: ..., shop_id: ..., load_id: ...}'"
            ~ " (loader dbt-vars LOAD prints them), or run the load with the loader"
        ) %}
    {%- endif %}
    {%- set context = {} %}
    {%- for name in names %}
        {%- do context.update({name: rows[0][name]}) %}
    {%- endfor %}
    {%- do return(context) %}
{%- endmacro -%}

{%- macro sms_load_var(name) -%}
    {% set value = sms_load_context()[name] %}
    {% if execute %}
        {% if value is none or not modules.re.match('^[A-Za-z0-9._-]{1,64}$', value | string) %}
            {% do exceptions.raise_compiler_error(
                "var " ~ name ~ " must be 1-64 characters of [A-Za-z0-9._-]: --vars '{" ~ name ~ ": ...}', got "
                ~ value
            ) %}
        {% endif %}
    {% endif %}
    {% do return(value | string) %}
{%- endmacro -%}

{#- partner_id, shop_id or load_id as a SQL text literal. -#}
{%- macro sms_load_literal(name) -%}
    {{ sms_sql_string(sms_load_var(name)) }}::text
{%- endmacro -%}

{#-
    The shop's number (loader_registry.shops) as a SQL bigint, which leads
    every key of the production tables. From the build context, or by hand
    from the shop_key var or else the registry; NULL for a shop the loader has
    never built, which has no production rows.
-#}
{%- macro sms_shop_key() -%}
    {%- set value = sms_load_context()['shop_key'] %}
    {%- if execute and value is none and var('run_id', none) is not none %}
        {%- set rows = run_query(
            'select shop_key from loader_registry.shops where partner_id = ' ~ sms_load_literal('partner_id')
            ~ ' and shop_id = ' ~ sms_load_literal('shop_id')
        ) %}
        {%- set value = rows[0]['shop_key'] if rows | length == 1 else none %}
    {%- endif %}
    {%- if execute and value is not none and not (value | string).isdigit() %}
        {% do exceptions.raise_compiler_error("shop_key must be a whole number, got " ~ value) %}
    {%- endif %}
    {{- 'null' if value is none else value | string }}::bigint
{%- endmacro -%}

{#- The condition that picks the load's shop's rows of a production table. -#}
{%- macro sms_of_this_shop() -%}
    shop_key = {{ sms_shop_key() }}
{%- endmacro -%}

{#- The run id as a SQL integer: only digits may get there. -#}
{%- macro sms_run_id() -%}
    {% set run_id = sms_load_context()['run_id'] %}
    {% if execute and (run_id is none or not (run_id | string).isdigit()) %}
        {% do exceptions.raise_compiler_error("needs the run: --vars '{run_id: N}', got " ~ run_id) %}
    {% endif %}
    {% do return((run_id | string) if execute else '0') %}
{%- endmacro -%}

{#-
    The deterministic internal id of a row: a UUID made of the md5 of the
    length-prefixed key (partner, shop, entity, external id), so that no two
    keys can run together ('ab' + 'c' vs 'a' + 'bc'):

        md5(
            length(partner) || ':' || partner || length(shop) || ':' || shop
            || length(entity) || ':' || entity || length(external_id) || ':' || external_id
        )::uuid

    Lengths count characters (PostgreSQL length() of text); md5 is taken over
    the UTF-8 bytes. In Python:
        key = "".join(f"{len(p)}:{p}" for p in (partner, shop, entity, external_id))
        uuid.UUID(hashlib.md5(key.encode("utf-8")).hexdigest())
    `entity` is the contract entity name (customers, vehicles, invoices,
    line_items, payments, inventory_parts, suppliers); partner and shop come
    from the vars, so the constant part of the key is built here, once. A NULL
    external id gives a NULL id.
-#}
{%- macro sms_internal_id(entity, external_id) -%}
    {%- set partner = sms_load_var('partner_id') -%}
    {%- set shop = sms_load_var('shop_id') -%}
    {%- set prefix = partner | length ~ ':' ~ partner ~ shop | length ~ ':' ~ shop ~ entity | length ~ ':' ~ entity -%}
    md5({{ sms_sql_string(prefix) }} || length({{ external_id }}) || ':' || {{ external_id }})::uuid
{%- endmacro -%}

{#-
    Whether a published row changes production: 'insert' when production has
    no row with its id, 'update' when a business column differs (NULLs
    compared as values), else 'unchanged'. load_id is bookkeeping, not a
    business column: a rerun that changes nothing leaves the row alone.
-#}
{%- macro sms_publish_action(planned, production, business_columns) -%}
    case
        when {{ production }}.id is null then 'insert'
        when
            {%- for column in business_columns %}
            {{ 'or ' if not loop.first }}({{ planned }}.{{ column }} is distinct from {{ production }}.{{ column }})
            {%- endfor %}
            then 'update'
        else 'unchanged'
    end
{%- endmacro -%}

{#-
    Per staged row of one entity: whether staging found an error or a warning,
    whether the record is ragged, and, per named column, whether its bytes
    did not decode (such a value cannot be trusted as a key or reference).
-#}
{%- macro sms_row_status(row_exceptions, key_columns) -%}
    select
        row_number,
        bool_or(severity = 'error') as has_staging_error,
        bool_or(severity = 'warning') as has_staging_warning,
        bool_or(rule = 'ragged') as is_ragged,
        {%- for column in key_columns %}
        bool_or(rule = 'encoding' and field = {{ sms_sql_string(column) }}) as is_untrusted_{{ column }}
        {{- ',' if not loop.last }}
        {%- endfor %}
    from {{ row_exceptions }}
    group by row_number
{%- endmacro -%}

{#- The contract columns of an entity, qualified by a relation alias, comma separated. -#}
{%- macro sms_contract_columns(alias, entity) -%}
    {%- for column in sms_v1_contract()[entity].columns %}
        {{ alias }}.{{ column.name }}{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro -%}

{#- Named columns qualified by a relation alias, comma separated, with a trailing comma when asked. -#}
{%- macro sms_column_list(alias, columns, trailing_comma=false) -%}
    {%- for column in columns %}
        {{ alias }}.{{ column }}{{ ',' if trailing_comma or not loop.last }}
    {%- endfor %}
{%- endmacro -%}

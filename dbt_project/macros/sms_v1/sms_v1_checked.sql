{#-
    Builders of the *_checked models, which give each staged row of an entity
    its verdict and internal ids. Every entity keys its rows, counts their ids
    and, when it refers to others, looks its parents up in the same way, so
    each of those steps is written once here; what differs (which CTEs are
    materialized, how production is asked) stays in the models, where it was
    tuned per entity.
-#}

{#-
    The body of a `keyed` CTE: the model's `staged` rows with their staging
    verdict (from its `row_status` CTE, see sms_row_status()), the key column as
    external_id and each reference column under its alias (`references`:
    output alias -> staged column). A ragged record's fields, and a field with
    undecodable bytes, are no key or reference: they become NULL.
-#}
{%- macro sms_v1_keyed(key_column, references={}) -%}
    select
        staged.*,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        {%- for alias, column in [('external_id', key_column)] + references.items() | list %}
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_{{ column }}, false)
                then staged.{{ column }}
        end as {{ alias }}{{ ',' if not loop.last }}
        {%- endfor %}
    from staged
    left join row_status on staged.row_number = row_status.row_number
{%- endmacro -%}

{#-
    How many rows of `keyed` carry each external id; a count above one makes
    every such row a duplicate. For entities small enough to join all ids.
-#}
{%- macro sms_v1_id_counts(keyed) -%}
    select
        external_id,
        count(*) as rows_with_id
    from {{ keyed }}
    where external_id is not null
    group by external_id
{%- endmacro -%}

{#-
    The external ids that more than one row of `keyed` carries: the rule of
    sms_v1_id_counts(), kept to the duplicated ids (normally none), so that
    the large entities join or hash a small set rather than every id.
-#}
{%- macro sms_v1_duplicated_ids(keyed) -%}
    select external_id
    from {{ keyed }}
    where external_id is not null
    group by external_id
    having count(*) > 1
{%- endmacro -%}

{#-
    A parent entity's rows in this load, one row per external id: its internal
    id (optional) and whether every row carrying it was rejected, which makes
    its children `parent_rejected`. Grouped by the external id alone, which the
    planner then knows to be unique; the internal id is the same on every row
    that carries it (taken with array_agg, as any_value() needs PostgreSQL 16).
    `extra_columns`: more aggregates, as SQL.
-#}
{%- macro sms_v1_in_load(checked, with_id=true, extra_columns=[]) -%}
    select
        external_id,
        {%- if with_id %}
        (array_agg(id))[1] as id,
        {%- endif %}
        bool_and(is_rejected) as is_rejected
        {%- for column in extra_columns %},
        {{ column }}
        {%- endfor %}
    from {{ checked }}
    where external_id is not null
    group by external_id
{%- endmacro -%}

{#-
    Whether a reference is `orphan`: set, not in this load (`in_load`, see
    sms_v1_in_load()) and not in production (`production`, the parent's rows
    of this partner and shop). Production comes last and as an `in` set,
    which PostgreSQL hashes on first use: it is read only when some reference
    is not in this load, which is normally never.
-#}
{%- macro sms_v1_is_orphan(entity, reference, in_load, production) -%}
    {{ reference }} is not null
    and {{ in_load }}.external_id is null
    and {{ sms_internal_id(entity, reference) }}
    not in (select {{ production }}.id from {{ production }})
{%- endmacro -%}

{#-
    The checked rows of an entity that refers to no other, one row per staged
    row: its verdict (rejected for a staging error, or an id shared with
    another row) and its internal id. The models of such entities are this
    macro and their own config; an entity with references resolves them in
    its own model.
-#}
{%- macro sms_v1_checked_without_references(entity, key_column) -%}
with

staged as (
    select * from {{ ref('stg_sms__' ~ entity) }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = {{ sms_sql_string(entity) }}
),

row_status as (
    {{ sms_row_status('row_exceptions', [key_column]) }}
),

keyed as (
    {{ sms_v1_keyed(key_column) }}
),

id_counts as (
    {{ sms_v1_id_counts('keyed') }}
),

checked as (
    select
        keyed.row_number,
        keyed.line_number,
        keyed.external_id,
        {{ sms_internal_id(entity, 'keyed.external_id') }} as id,
        keyed.has_staging_error,
        keyed.has_staging_warning,
        coalesce(id_counts.rows_with_id > 1, false) as is_duplicate,
        {{ sms_contract_columns('keyed', entity) }}
    from keyed
    left join id_counts on keyed.external_id = id_counts.external_id
),

final as (
    select
        *,
        has_staging_warning as has_warning,
        has_staging_error or is_duplicate as is_rejected
    from checked
)

select * from final
{%- endmacro -%}

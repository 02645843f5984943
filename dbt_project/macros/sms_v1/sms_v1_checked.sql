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

-- A ragged record's fields, and a field with undecodable bytes, are no key.
keyed as (
    select
        staged.*,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_{{ key_column }}, false)
                then staged.{{ key_column }}
        end as external_id
    from staged
    left join row_status on staged.row_number = row_status.row_number
),

id_counts as (
    select
        external_id,
        count(*) as rows_with_id
    from keyed
    where external_id is not null
    group by external_id
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

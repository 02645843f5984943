-- The ledger of the built run (the loader keeps every run's in the registry).
-- One row per contract entity, zeros for an empty file,
-- so that nothing can go missing unnoticed:
--   manifest_rows = landed_rows = valid_rows + rejected_rows
--   valid_rows = inserted + updated + unchanged
-- Rows carried over unchanged from the shop's previous run (run_files.carried_rows,
-- not checked again) count as valid and unchanged.
with

entities as (
    {% for entity in sms_v1_contract() %}
        select
            {{ sms_sql_string(entity) }} as entity,
            {{ loop.index }} as entity_order
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

run_files as (
    select * from {{ source('loader_registry', 'run_files') }}
    where run_id = {{ sms_run_id() }}
),

-- Counted in the raw layer itself, not from staging: what dlt wrote for the file.
landed as (
    {% for entity in sms_v1_contract() %}
        select
            {{ sms_sql_string(entity) }} as entity,
            count(*) as landed_rows
        from ({{ sms_v1_file_rows(entity) }}) as raw_rows
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

checked as (
    {% for entity in sms_v1_contract() %}
        select
            {{ sms_sql_string(entity) }} as entity,
            count(*) filter (where not is_rejected) as valid_rows,
            count(*) filter (where is_rejected) as rejected_rows,
            count(*) filter (where has_warning and not is_rejected) as warning_rows
        from {{ ref('int_sms__' ~ entity ~ '_checked') }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

planned as (
    {% for entity in sms_v1_contract() %}
        select
            {{ sms_sql_string(entity) }} as entity,
            count(*) filter (where _action = 'insert') as inserted,
            count(*) filter (where _action = 'update') as updated,
            count(*) filter (where _action = 'unchanged') as unchanged
        from {{ ref('publish_' ~ entity) }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

final as (
    select
        {{ sms_run_id() }}::bigint as run_id,
        {{ sms_load_literal('partner_id') }} as partner_id,
        {{ sms_load_literal('shop_id') }} as shop_id,
        {{ sms_load_literal('load_id') }} as load_id,
        entities.entity,
        entities.entity_order,
        coalesce(run_files.manifest_rows, 0) as manifest_rows,
        coalesce(landed.landed_rows, 0) as landed_rows,
        coalesce(checked.valid_rows, 0) + coalesce(run_files.carried_rows, 0) as valid_rows,
        coalesce(checked.rejected_rows, 0) as rejected_rows,
        coalesce(checked.warning_rows, 0) as warning_rows,
        coalesce(planned.inserted, 0) as inserted,
        coalesce(planned.updated, 0) as updated,
        coalesce(planned.unchanged, 0) + coalesce(run_files.carried_rows, 0) as unchanged
    from entities
    left join run_files on entities.entity = run_files.entity
    left join landed on entities.entity = landed.entity
    left join checked on entities.entity = checked.entity
    left join planned on entities.entity = planned.entity
)

select * from final

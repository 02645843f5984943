-- The vars partner_id, shop_id and load_id scope production lookups and the
-- internal ids: they must name the load of var run_id. Returns the run if not.
with

runs as (
    select * from {{ source('loader_registry', 'runs') }}
    where run_id = {{ sms_run_id() }}
),

mismatched as (
    select
        run_id,
        partner_id,
        shop_id,
        load_id
    from runs
    where
        partner_id <> {{ sms_load_literal('partner_id') }}
        or shop_id <> {{ sms_load_literal('shop_id') }}
        or load_id <> {{ sms_load_literal('load_id') }}
)

select * from mismatched

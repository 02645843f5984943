-- Nothing is lost: for every entity of the run, the manifest's rows were all
-- landed, every landed row is either valid or rejected, and every valid row is
-- inserted, updated or unchanged by the publish plan. Returns the entities
-- that break it.
with

ledger as (
    select * from {{ ref('ledger') }}
    where run_id = {{ sms_run_id() }}
),

broken as (
    select
        entity,
        manifest_rows,
        landed_rows,
        valid_rows,
        rejected_rows,
        inserted,
        updated,
        unchanged
    from ledger
    where
        manifest_rows <> landed_rows
        or landed_rows <> valid_rows + rejected_rows
        or valid_rows <> inserted + updated + unchanged
)

select * from broken

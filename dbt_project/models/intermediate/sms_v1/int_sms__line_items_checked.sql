{{ config(indexes=[
    {'columns': ['row_number'], 'unique': true},
    {'columns': ['external_id']},
]) }}
-- The invoice lines of one run, each with its verdict and internal ids. A line
-- is rejected for a staging error, an id shared with another row, an invoice
-- that is `orphan` or `parent_rejected`, or its parent line: missing
-- (`orphan`), on another invoice (`parent_mismatch`), on a cycle of parent
-- lines with the line itself (`cycle`), or rejected, at any depth above it
-- (`parent_rejected`, which lines below a cycle get too).
--
-- Over a million lines, every pass over all of them counts: a materialized
-- CTE of all lines spills to disk, and an md5 per line costs about as much as
-- reading it. So the lines are read by CTEs that PostgreSQL inlines, the
-- parent checks run on the lines that have a parent only, production is asked
-- only about references this load does not resolve, and an invoice's internal
-- id is worked out once per invoice.
with

staged as (
    select * from {{ ref('stg_sms__line_items') }}
),

row_exceptions as (
    select * from {{ ref('stg_sms__row_exceptions') }}
    where entity = 'line_items'
),

invoices as (
    select * from {{ ref('int_sms__invoices_checked') }}
),

production_invoices as (
    select * from {{ source('prod_sms', 'invoices') }}
    where {{ sms_of_this_shop() }}
),

production_line_items as (
    select * from {{ source('prod_sms', 'line_items') }}
    where {{ sms_of_this_shop() }}
),

row_status as (
    {{ sms_row_status(
        'row_exceptions', ['external_dataline_id', 'external_invoice_id', 'external_parent_dataline_id']
    ) }}
),

-- Not materialized: each reader takes only the columns it needs.
keyed as not materialized (
    {{ sms_v1_keyed('external_dataline_id', {
        'invoice_external_id': 'external_invoice_id',
        'parent_external_id': 'external_parent_dataline_id',
    }) }}
),

-- Normally none; read as a set (`in`), which keeps the planner's row counts sane.
duplicated_ids as (
    {{ sms_v1_duplicated_ids('keyed') }}
),

-- An invoice's internal id, once per invoice rather than once per line.
invoices_in_load as (
    select
        external_id,
        bool_and(is_rejected) as is_rejected,
        {{ sms_internal_id('invoices', 'external_id') }} as id
    from invoices
    where external_id is not null
    group by external_id
),

-- The lines with a parent line: only they need the parent checks.
with_parent as (
    select
        row_number,
        external_id,
        invoice_external_id,
        parent_external_id
    from keyed
    where parent_external_id is not null
),

-- Each line with a parent, and the rows that carry its parent id (none when
-- the parent is not in this load); the parent's row and invoice mean something
-- only when one row carries its id.
parent_lines as (
    select
        with_parent.row_number,
        with_parent.external_id,
        with_parent.invoice_external_id,
        with_parent.parent_external_id,
        count(parent.row_number) as parent_rows,
        min(parent.row_number) as parent_row_number,
        min(parent.invoice_external_id) as parent_invoice_external_id
    from with_parent
    -- On the staged id (a trusted one, as external_id is): its statistics keep the plan sane.
    left join keyed as parent
        on
            with_parent.parent_external_id = parent.external_dataline_id
            and parent.external_id is not null
    group by
        with_parent.row_number,
        with_parent.external_id,
        with_parent.invoice_external_id,
        with_parent.parent_external_id
),

-- Production is asked only about the parent lines this load does not have
-- (normally none). Two branches rather than one more join keep the planner's
-- row counts sane.
parents as (
    select
        *,
        null::uuid as production_invoice_id,
        false as is_in_production
    from parent_lines
    where parent_rows > 0

    union all

    select
        parent_lines.*,
        production_line_items.invoice_id as production_invoice_id,
        production_line_items.id is not null as is_in_production
    from parent_lines
    left join production_line_items
        on {{ sms_internal_id('line_items', 'parent_lines.parent_external_id') }} = production_line_items.id
    where parent_lines.parent_rows = 0
),

-- What the parent line says about a line, short of walking further up.
parent_checks as (
    select
        row_number,
        {{ sms_internal_id('line_items', 'parent_external_id') }} as parent_line_item_id,
        parent_rows = 0 and not is_in_production as is_parent_line_orphan,
        -- Every row of a duplicated parent id is rejected.
        parent_rows > 1 as is_parent_line_duplicated,
        coalesce(
            case
                when parent_rows = 1
                    then parent_invoice_external_id <> invoice_external_id
                when parent_rows = 0
                    then production_invoice_id <> {{ sms_internal_id('invoices', 'invoice_external_id') }}
            end,
            false
        ) as is_parent_line_mismatch,
        -- The edge the cycle walk follows: between lines whose ids are unique in the load.
        case
            when
                parent_rows = 1
                and external_id is not null
                and external_id not in (select duplicated_ids.external_id from duplicated_ids)
                then parent_row_number
        end as parent_row_number
    from parents
),

-- Everything that rejects a line without walking up its parent lines. The
-- `in` sets are hashed on first use, so production invoices are read only if
-- some line's invoice is not in this load.
direct as (
    select
        keyed.*,
        coalesce(keyed.external_id in (select duplicated_ids.external_id from duplicated_ids), false) as is_duplicate,
        coalesce(
            invoices_in_load.id, {{ sms_internal_id('invoices', 'keyed.invoice_external_id') }}
        ) as invoice_id,
        parent_checks.parent_line_item_id,
        {{ sms_v1_is_orphan(
            'invoices', 'keyed.invoice_external_id', 'invoices_in_load', 'production_invoices'
        ) }} as is_invoice_orphan,
        coalesce(invoices_in_load.is_rejected, false) as is_invoice_parent_rejected,
        coalesce(parent_checks.is_parent_line_orphan, false) as is_parent_line_orphan,
        coalesce(parent_checks.is_parent_line_duplicated, false) as is_parent_line_duplicated,
        coalesce(parent_checks.is_parent_line_mismatch, false) as is_parent_line_mismatch,
        parent_checks.parent_row_number
    from keyed
    left join invoices_in_load on keyed.invoice_external_id = invoices_in_load.external_id
    left join parent_checks on keyed.row_number = parent_checks.row_number
),

-- Not materialized: read whole once, and for the lines above others once more.
flagged as not materialized (
    select
        *,
        has_staging_error
        or is_duplicate
        or is_invoice_orphan
        or is_invoice_parent_rejected
        or is_parent_line_orphan
        or is_parent_line_duplicated
        or is_parent_line_mismatch as is_directly_rejected
    from direct
),

edges as (
    select
        row_number,
        parent_row_number
    from parent_checks
    where parent_row_number is not null
),

-- Every (line, ancestor) pair, walking up the parent lines of this load. The
-- walk stops on a line it has seen: a line that reaches itself is on a cycle.
-- (The recursive query is nested so that the model's own WITH stays plain.)
ancestry as (
    with recursive walk (start_row_number, ancestor_row_number, path) as (
        select
            row_number,
            parent_row_number,
            array[row_number]
        from edges

        union all

        select
            walk.start_row_number,
            edges.parent_row_number,
            walk.path || walk.ancestor_row_number
        from walk
        inner join edges on walk.ancestor_row_number = edges.row_number
        where walk.ancestor_row_number <> all(walk.path)
    )

    select distinct
        start_row_number,
        ancestor_row_number
    from walk
),

on_cycle as (
    select distinct start_row_number as row_number
    from ancestry
    where ancestor_row_number = start_row_number
),

-- Only a line some line walks up to can reject another.
directly_rejected as (
    select row_number
    from flagged
    where is_directly_rejected and row_number in (select edges.parent_row_number from edges)
),

-- Lines with a rejected line anywhere above them; for a line off a cycle, a
-- line on one counts as rejected.
below_rejected as (
    select distinct ancestry.start_row_number as row_number
    from ancestry
    left join directly_rejected as ancestor on ancestry.ancestor_row_number = ancestor.row_number
    left join on_cycle as ancestor_cycle on ancestry.ancestor_row_number = ancestor_cycle.row_number
    left join on_cycle as own_cycle on ancestry.start_row_number = own_cycle.row_number
    where
        ancestry.ancestor_row_number <> ancestry.start_row_number
        and (
            ancestor.row_number is not null
            or (ancestor_cycle.row_number is not null and own_cycle.row_number is null)
        )
),

checked as (
    select
        flagged.row_number,
        flagged.line_number,
        flagged.external_id,
        {{ sms_internal_id('line_items', 'flagged.external_id') }} as id,
        flagged.invoice_external_id,
        flagged.parent_external_id,
        flagged.invoice_id,
        flagged.parent_line_item_id,
        flagged.has_staging_error,
        flagged.has_staging_warning,
        flagged.is_duplicate,
        flagged.is_invoice_orphan,
        flagged.is_invoice_parent_rejected,
        flagged.is_parent_line_orphan,
        flagged.is_parent_line_mismatch,
        flagged.is_directly_rejected,
        on_cycle.row_number is not null as is_on_cycle,
        flagged.is_parent_line_duplicated or below_rejected.row_number is not null as is_parent_line_rejected,
        {{ sms_contract_columns('flagged', 'line_items') }}
    from flagged
    left join on_cycle on flagged.row_number = on_cycle.row_number
    left join below_rejected on flagged.row_number = below_rejected.row_number
),

final as (
    select
        *,
        has_staging_warning as has_warning,
        is_directly_rejected or is_on_cycle or is_parent_line_rejected as is_rejected
    from checked
)

select * from final

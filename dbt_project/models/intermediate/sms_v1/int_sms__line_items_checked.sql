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
-- The verdicts are worked out on the keys only: the CTEs read more than once
-- are materialized by PostgreSQL, and with every contract column of over a
-- million lines they spilled to disk. The typed columns join back once, at
-- the end.
with

-- Only the keys: PostgreSQL leaves the view's other (typed) columns uncomputed.
staged_keys as (
    select
        row_number,
        external_dataline_id,
        external_invoice_id,
        external_parent_dataline_id
    from {{ ref('stg_sms__line_items') }}
),

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
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

production_line_items as (
    select * from {{ source('prod_sms', 'line_items') }}
    where partner_id = {{ sms_load_literal('partner_id') }} and shop_id = {{ sms_load_literal('shop_id') }}
),

row_status as (
    {{ sms_row_status(
        'row_exceptions', ['external_dataline_id', 'external_invoice_id', 'external_parent_dataline_id']
    ) }}
),

-- A ragged record's fields, and a field with undecodable bytes, are no key or reference.
keyed as (
    select
        staged_keys.row_number,
        coalesce(row_status.has_staging_error, false) as has_staging_error,
        coalesce(row_status.has_staging_warning, false) as has_staging_warning,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_dataline_id, false)
                then staged_keys.external_dataline_id
        end as external_id,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_invoice_id, false)
                then staged_keys.external_invoice_id
        end as invoice_external_id,
        case
            when not coalesce(row_status.is_ragged or row_status.is_untrusted_external_parent_dataline_id, false)
                then staged_keys.external_parent_dataline_id
        end as parent_external_id
    from staged_keys
    left join row_status on staged_keys.row_number = row_status.row_number
),

-- Each line id of the load; its row and invoice mean something only when one row carries it.
lines_in_load as (
    select
        external_id,
        count(*) as rows_with_id,
        min(row_number) as row_number,
        min(invoice_external_id) as invoice_external_id
    from keyed
    where external_id is not null
    group by external_id
),

invoices_in_load as (
    select
        external_id,
        bool_and(is_rejected) as is_rejected
    from invoices
    where external_id is not null
    group by external_id
),

resolved as (
    select
        keyed.*,
        coalesce(own.rows_with_id > 1, false) as is_duplicate,
        {{ sms_internal_id('invoices', 'keyed.invoice_external_id') }} as invoice_id,
        {{ sms_internal_id('line_items', 'keyed.parent_external_id') }} as parent_line_item_id
    from keyed
    left join lines_in_load as own on keyed.external_id = own.external_id
),

-- Everything that rejects a line without walking up its parent lines.
direct as (
    select
        resolved.*,
        resolved.invoice_external_id is not null
        and invoices_in_load.external_id is null
        and production_invoices.id is null as is_invoice_orphan,
        coalesce(invoices_in_load.is_rejected, false) as is_invoice_parent_rejected,
        resolved.parent_external_id is not null
        and parent_lines.external_id is null
        and production_parents.id is null as is_parent_line_orphan,
        -- Every row of a duplicated parent id is rejected.
        coalesce(parent_lines.rows_with_id > 1, false) as is_parent_line_duplicated,
        coalesce(
            case
                when parent_lines.rows_with_id = 1
                    then parent_lines.invoice_external_id <> resolved.invoice_external_id
                when parent_lines.external_id is null
                    then production_parents.invoice_id <> resolved.invoice_id
            end,
            false
        ) as is_parent_line_mismatch,
        -- The edge the cycle walk follows: between lines whose ids are unique in the load.
        case
            when parent_lines.rows_with_id = 1 and not resolved.is_duplicate and resolved.external_id is not null
                then parent_lines.row_number
        end as parent_row_number
    from resolved
    left join invoices_in_load on resolved.invoice_external_id = invoices_in_load.external_id
    left join production_invoices on resolved.invoice_id = production_invoices.id
    left join lines_in_load as parent_lines on resolved.parent_external_id = parent_lines.external_id
    left join production_line_items as production_parents on resolved.parent_line_item_id = production_parents.id
),

flagged as (
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
    from flagged
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

-- The few directly rejected lines: probing them beats hashing every line.
directly_rejected as (
    select row_number
    from flagged
    where is_directly_rejected
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
        staged.line_number,
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
        {{ sms_contract_columns('staged', 'line_items') }}
    from flagged
    inner join staged on flagged.row_number = staged.row_number
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

-- schema version: 5
-- Run registry: one row per run, an append-only status history, and the files
-- each run landed. Applied once per version of this file (schema_version holds
-- its digest and version), never on every command: DDL takes ACCESS EXCLUSIVE
-- locks, and a reader idle in a transaction would make every command wait. Every
-- statement is idempotent, so a newer version applies over an older one; a
-- loader refuses a registry of a version newer than this file's.
create schema if not exists loader_registry;

create table if not exists loader_registry.runs (
    run_id bigint generated always as identity primary key,
    partner_id text not null,
    shop_id text not null,
    load_id text not null,
    contract text not null,
    status text not null,
    triggered_by text not null,
    source_path text,
    started_at timestamptz not null default clock_timestamp(),
    completed_at timestamptz,
    error_count integer not null default 0,
    warning_count integer not null default 0,
    message text,
    constraint runs_status_known check (
        status in ('queued', 'running', 'completed', 'failed', 'needs_review', 'rejected')
    ),
    constraint runs_completed_after_start check (completed_at is null or completed_at >= started_at)
);

-- What decided the run's outcome (files, parse settings, dbt SQL): an identical
-- rerun is recognised by it and carried over instead of recomputed.
alter table loader_registry.runs add column if not exists fingerprint text;

create index if not exists runs_load_key on loader_registry.runs (partner_id, shop_id, load_id, run_id desc);

-- Runs wait in the queue before they start: queued_at is when the run was
-- registered, started_at when a worker (or `loader run`) last took it up, and
-- attempts how many times one did.
alter table loader_registry.runs add column if not exists queued_at timestamptz;
update loader_registry.runs set queued_at = started_at where queued_at is null;
alter table loader_registry.runs alter column queued_at set default clock_timestamp();
alter table loader_registry.runs alter column queued_at set not null;
alter table loader_registry.runs alter column started_at drop not null;
alter table loader_registry.runs alter column started_at drop default;
alter table loader_registry.runs add column if not exists attempts integer not null default 0;
alter table loader_registry.runs drop constraint if exists runs_started_after_queued;
alter table loader_registry.runs add constraint runs_started_after_queued check (started_at >= queued_at);

-- The run states and every allowed move between them, written once: a trigger
-- refuses any other move, whichever code path (or person at psql) tries it.
create table if not exists loader_registry.run_transitions (
    from_status text not null,
    to_status text not null,
    why text not null,
    primary key (from_status, to_status)
);

delete from loader_registry.run_transitions;
insert into loader_registry.run_transitions (from_status, to_status, why) values
('queued', 'running', 'a worker (or loader run) takes the run'),
('running', 'completed', 'published, or nothing to publish'),
('running', 'failed', 'the run failed'),
('running', 'needs_review', 'a threshold held the load for review'),
('running', 'rejected', 'the folder was refused'),
('running', 'queued', 'the worker died or a transient failure: taken again'),
('failed', 'queued', 'loader rerun'),
('needs_review', 'queued', 'loader rerun'),
('needs_review', 'completed', 'loader approve'),
('needs_review', 'rejected', 'loader reject');

create or replace function loader_registry.check_run_transition() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        if new.status <> 'queued' then
            raise exception 'a new run starts queued, not %', new.status
                using errcode = 'check_violation';
        end if;
    elsif new.status is distinct from old.status and not exists (
        select from loader_registry.run_transitions as t
        where t.from_status = old.status and t.to_status = new.status
    ) then
        raise exception 'run %: % -> % is not an allowed move', old.run_id, old.status, new.status
            using errcode = 'check_violation';
    end if;
    return new;
end;
$$;

create or replace trigger runs_state_machine
before insert or update of status on loader_registry.runs
for each row execute function loader_registry.check_run_transition();

create table if not exists loader_registry.run_status_history (
    history_id bigint generated always as identity primary key,
    run_id bigint not null references loader_registry.runs (run_id),
    status text not null,
    changed_at timestamptz not null default clock_timestamp(),
    detail text,
    constraint history_status_known check (
        status in ('queued', 'running', 'completed', 'failed', 'needs_review', 'rejected')
    )
);

create index if not exists run_status_history_run on loader_registry.run_status_history (run_id, history_id);

create or replace function loader_registry.refuse_history_change() returns trigger
language plpgsql as $$
begin
    raise exception 'loader_registry.run_status_history is append-only (% refused)', tg_op;
end;
$$;

create or replace trigger run_status_history_append_only
before update or delete on loader_registry.run_status_history
for each row execute function loader_registry.refuse_history_change();

create or replace trigger run_status_history_no_truncate
before truncate on loader_registry.run_status_history
for each statement execute function loader_registry.refuse_history_change();

-- Problems found in a run's files: why a folder was refused, or file-level
-- findings (missing or unknown columns) that the exception report lists with row 0.
create table if not exists loader_registry.run_problems (
    problem_id bigint generated always as identity primary key,
    run_id bigint not null references loader_registry.runs (run_id),
    file_name text,
    entity text,
    field text,
    rule text not null,
    severity text not null check (severity in ('error', 'warning')),
    message text not null
);

create index if not exists run_problems_run on loader_registry.run_problems (run_id);

-- Every distinct file landed in a raw dataset. Raw rows carry its file_id, so a
-- row's load key, file name and digest are one join away and a file whose digest
-- was already landed for the same shop and entity is stored once.
create table if not exists loader_registry.landed_files (
    file_id bigint generated always as identity primary key,
    partner_id text not null,
    shop_id text not null,
    entity text not null,
    sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    contract text not null,
    raw_table text not null,
    file_name text not null,
    first_load_id text not null,
    rows bigint,
    problem_rows bigint,
    header jsonb not null,
    state text not null default 'landing' check (state in ('landing', 'landed')),
    landed_at timestamptz,
    constraint landed_files_once unique (partner_id, shop_id, entity, sha256)
);

alter table loader_registry.landed_files add column if not exists problem_rows bigint;

-- Which landed file a run used for each entity (a rerun points at the same file_id).
create table if not exists loader_registry.run_files (
    run_id bigint not null references loader_registry.runs (run_id),
    entity text not null,
    file_id bigint not null references loader_registry.landed_files (file_id),
    manifest_rows bigint not null,
    newly_landed boolean not null,
    primary key (run_id, entity)
);

-- A reload checks only what changed: rows identical to rows the shop's previous
-- completed run accepted without a remark are carried over as valid and
-- unchanged (loader/publish/unchanged_rows.py). Per entity, the run whose
-- verdicts were carried, how many rows, and the row numbers dbt checked
-- (NULL: every row of the file).
alter table loader_registry.run_files add column if not exists carried_from_run bigint;
alter table loader_registry.run_files add column if not exists carried_rows bigint not null default 0;
alter table loader_registry.run_files add column if not exists checked_rows int8multirange;

-- The fingerprint of what decides a row's verdict besides the files (contract,
-- parse settings, dbt SQL): verdicts are carried only between runs that share it.
alter table loader_registry.runs add column if not exists rules_fingerprint text;

-- The load that each worker slot's next dbt build validates (dbt macro
-- sms_load_context): one row per slot, replaced before each of its builds. dbt
-- reads it at run time, so the loader passes no vars and dbt's parse stays
-- cached. Slot 1 is also the one a build by hand reads (LOADER_DBT_SLOT unset).
drop table if exists loader_registry.dbt_context;
-- Each shop's number, the first column of every key of the production tables
-- (see loader/contracts/<contract>.sql): handed out in order, so that a new
-- shop's rows go at the end of each index.
create table if not exists loader_registry.shops (
    shop_key bigint generated always as identity primary key,
    partner_id text not null,
    shop_id text not null,
    created_at timestamptz not null default clock_timestamp(),
    constraint shops_shop unique (partner_id, shop_id)
);

create table if not exists loader_registry.build_context (
    slot integer primary key check (slot >= 1),
    run_id bigint not null references loader_registry.runs (run_id),
    partner_id text not null,
    shop_id text not null,
    load_id text not null,
    date_format text,
    set_at timestamptz not null default clock_timestamp()
);

-- The shop's key, for dbt to find the shop's production rows by.
alter table loader_registry.build_context add column if not exists shop_key bigint;

-- A run being worked on is leased to one worker, which renews the lease while
-- it lives. A lease not renewed within the lease time means the worker is gone
-- (killed, machine lost, connection dropped): its run is taken back. Kept in
-- its own table so that renewing never waits on a lock of the run's row.
create table if not exists loader_registry.run_leases (
    run_id bigint primary key references loader_registry.runs (run_id),
    worker text not null,
    backend_pid integer not null,
    taken_at timestamptz not null default clock_timestamp(),
    heartbeat_at timestamptz not null default clock_timestamp()
);

-- Where the run's kept files are (the product's inbox) and where they came from.
alter table loader_registry.runs add column if not exists submitted_from text;
-- A run retried after a transient failure waits until then (backoff with jitter).
alter table loader_registry.runs add column if not exists not_before timestamptz;

-- The queue: the first queued run of each shop, in submission order.
create index if not exists runs_queue on loader_registry.runs (partner_id, shop_id, queued_at, run_id)
where status in ('queued', 'running', 'needs_review');

-- Each run's ledger and exception report, copied from its dbt build in the
-- same transaction that publishes it (or, for a run that is not published,
-- when its build ends): what a run did is recorded exactly when it is done,
-- whichever worker slot built it.
create table if not exists loader_registry.run_ledger (
    run_id bigint not null references loader_registry.runs (run_id),
    entity text not null,
    entity_order integer not null,
    manifest_rows bigint not null,
    landed_rows bigint not null,
    valid_rows bigint not null,
    rejected_rows bigint not null,
    warning_rows bigint not null,
    inserted bigint not null,
    updated bigint not null,
    unchanged bigint not null,
    primary key (run_id, entity)
);

create table if not exists loader_registry.run_exceptions (
    run_id bigint not null references loader_registry.runs (run_id),
    entity text not null,
    row_number bigint not null,
    line_number bigint not null,
    field text not null,
    rule text not null,
    severity text not null,
    value text,
    message text not null
);

create index if not exists run_exceptions_run on loader_registry.run_exceptions (run_id, entity, row_number);

-- The state machine and the append-only history hold in every session, also
-- where session_replication_role = replica: the publish sets that (to skip
-- foreign-key triggers) in the very transaction that completes a run.
alter table loader_registry.runs enable always trigger runs_state_machine;
alter table loader_registry.run_status_history enable always trigger run_status_history_append_only;
alter table loader_registry.run_status_history enable always trigger run_status_history_no_truncate;

-- Review: why a held run was held, one object per threshold crossed
-- ({"threshold", "entity", "value", "limit"}); and who moved a run, and when
-- its raw data and kept files were purged (retention).
alter table loader_registry.runs add column if not exists held_because jsonb;
alter table loader_registry.runs add column if not exists purged_at timestamptz;
alter table loader_registry.run_status_history add column if not exists changed_by text;

-- A purged file's raw rows are gone: the same file arriving again is landed anew.
alter table loader_registry.landed_files drop constraint if exists landed_files_state_check;
alter table loader_registry.landed_files add constraint landed_files_state_check
check (state in ('landing', 'landed', 'purged'));

-- The plan of a held run, kept for review (tables in schema loader_review):
-- per entity its checksum and counts when it was checked, so that approve
-- publishes exactly that plan or nothing. discarded_at: the kept tables were
-- dropped (approved, rejected, rerun or purged).
create table if not exists loader_registry.run_review_plans (
    run_id bigint not null references loader_registry.runs (run_id),
    entity text not null,
    entity_order integer not null,
    checksum text not null,
    inserts bigint not null,
    updates bigint not null,
    unchanged bigint not null,
    kept_at timestamptz not null default clock_timestamp(),
    discarded_at timestamptz,
    primary key (run_id, entity)
);

-- How long each step of a run's last attempt took and how many rows it handled.
create table if not exists loader_registry.run_steps (
    run_id bigint not null references loader_registry.runs (run_id),
    step text not null check (step in ('verify', 'land', 'dbt build', 'publish')),
    step_order integer not null,
    started_at timestamptz not null,
    seconds double precision not null check (seconds >= 0),
    rows bigint,
    primary key (run_id, step)
);

-- 'compare': finding the rows identical to the shop's previous load (version 3).
alter table loader_registry.run_steps drop constraint if exists run_steps_step_check;
alter table loader_registry.run_steps add constraint run_steps_step_check
check (step in ('verify', 'land', 'compare', 'dbt build', 'publish'));

-- The digest of other DDL the loader applies once per version (each contract's
-- production and raw tables, see database.apply_once), by name.
create table if not exists loader_registry.ddl_versions (
    name text primary key,
    digest text not null,
    applied_at timestamptz not null default clock_timestamp()
);

-- The schema version of each, where it has one (see database.apply_versioned);
-- NULL in a row written before versions were recorded, which is version 1.
alter table loader_registry.ddl_versions add column if not exists version integer;

-- The digest of the version of this file that was applied last.
create table if not exists loader_registry.schema_version (
    singleton boolean primary key default true check (singleton),
    digest text not null,
    applied_at timestamptz not null default clock_timestamp()
);

alter table loader_registry.schema_version add column if not exists version integer;

-- Notifications, an outbox: each run outcome a partner's webhooks may be told
-- of is an event, written by a trigger in the very transaction that records
-- the outcome, so no outcome is lost or announced before it is committed. The
-- trigger is deferred to the commit: the event's summary (counts, message,
-- held_because, ledger) is the run as that transaction left it, whatever
-- order it wrote them in, and a later rerun of the run leaves it as it was.
create table if not exists loader_registry.run_events (
    event_id bigint generated always as identity primary key,
    run_id bigint not null references loader_registry.runs (run_id),
    status text not null check (status in ('completed', 'failed', 'needs_review', 'rejected')),
    occurred_at timestamptz not null,
    summary json not null,
    expanded_at timestamptz
);

create index if not exists run_events_pending on loader_registry.run_events (event_id) where expanded_at is null;

create or replace function loader_registry.record_run_event() returns trigger
language plpgsql as $$
begin
    insert into loader_registry.run_events (run_id, status, occurred_at, summary)
    select
        r.run_id,
        new.status,
        coalesce(r.completed_at, clock_timestamp()),
        json_build_object(
            'error_count', r.error_count,
            'warning_count', r.warning_count,
            'message', r.message,
            'held_because', r.held_because,
            'ledger', (
                select json_object_agg(l.entity, json_build_object(
                    'manifest_rows', l.manifest_rows, 'landed_rows', l.landed_rows, 'valid_rows', l.valid_rows,
                    'rejected_rows', l.rejected_rows, 'warning_rows', l.warning_rows, 'inserted', l.inserted,
                    'updated', l.updated, 'unchanged', l.unchanged
                ) order by l.entity_order)
                from loader_registry.run_ledger as l where l.run_id = r.run_id
            )
        )
    from loader_registry.runs as r where r.run_id = new.run_id;
    -- Delivered at commit: senders wake at once instead of at their next poll.
    perform pg_notify('loader_events', new.run_id::text);
    return null;
end;
$$;

-- PostgreSQL has no "create or replace" for constraint triggers (the only deferrable kind).
drop trigger if exists runs_outcome_event on loader_registry.runs;
create constraint trigger runs_outcome_event
after update of status on loader_registry.runs
deferrable initially deferred
for each row
when (new.status is distinct from old.status and new.status in ('completed', 'failed', 'needs_review', 'rejected'))
execute function loader_registry.record_run_event();

-- Always, also where session_replication_role = replica: the publish sets it
-- (to skip foreign-key triggers) in the transaction that completes a run.
alter table loader_registry.runs enable always trigger runs_outcome_event;

-- One delivery per event and subscribed webhook (partners.yml `notify` when the
-- event was expanded), its body frozen then, so that every attempt sends the
-- same bytes. The signing secret is never stored: only the name of the
-- environment variable that holds it. A delivery is due at next_attempt_at;
-- a sender claims it by pushing that past the longest an attempt can take.
create table if not exists loader_registry.webhook_deliveries (
    delivery_id bigint generated always as identity primary key,
    event_id bigint not null references loader_registry.run_events (event_id),
    run_id bigint not null references loader_registry.runs (run_id),
    event text not null,
    url text not null,
    secret_env text not null,
    body text not null,
    attempts integer not null default 0 check (attempts >= 0),
    created_at timestamptz not null default clock_timestamp(),
    next_attempt_at timestamptz not null default clock_timestamp(),
    delivered_at timestamptz,
    gave_up_at timestamptz,
    last_error text,
    constraint webhook_deliveries_once unique (event_id, url)
);

create index if not exists webhook_deliveries_due on loader_registry.webhook_deliveries (next_attempt_at)
where delivered_at is null and gave_up_at is null;

create index if not exists webhook_deliveries_run on loader_registry.webhook_deliveries (run_id);

-- Every attempt of a delivery: the HTTP status it got (null when there was no
-- answer: refused, timed out, no secret) and why it failed.
create table if not exists loader_registry.webhook_attempts (
    delivery_id bigint not null references loader_registry.webhook_deliveries (delivery_id),
    attempt integer not null check (attempt >= 1),
    attempted_at timestamptz not null default clock_timestamp(),
    http_status integer,
    error text,
    milliseconds integer not null check (milliseconds >= 0),
    primary key (delivery_id, attempt)
);

-- Dashboard: users, their sessions and what operators did (loader/access).
-- Only an argon2id hash of each password is kept. The name rule and the roles
-- are checked here too, so that a user added by hand at psql is one the
-- dashboard can handle.
create table if not exists loader_registry.dashboard_users (
    name text primary key check (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role text not null check (role in ('viewer', 'operator', 'admin')),
    password_hash text not null check (password_hash like '$argon2id$%'),
    created_at timestamptz not null default clock_timestamp(),
    updated_at timestamptz not null default clock_timestamp()
);

-- Failed logins in a row, per name tried, for slowing down guessing. One table
-- for names that exist and names that do not (rather than counters on the
-- users' rows): both are throttled by the same code and the same query, so
-- neither the answer nor its timing tells which names exist, and a name
-- tried is never made a user.
create table if not exists loader_registry.login_failures (
    name text primary key,
    failures integer not null check (failures >= 1),
    last_failed_at timestamptz not null
);

-- Only the sha256 of a session's token: the token itself is held by the
-- browser alone, so a copy of this table logs no one in.
create table if not exists loader_registry.dashboard_sessions (
    token_sha256 text primary key check (token_sha256 ~ '^[0-9a-f]{64}$'),
    user_name text not null references loader_registry.dashboard_users (name) on delete cascade,
    created_at timestamptz not null default clock_timestamp(),
    expires_at timestamptz not null
);

-- Expired sessions are deleted at each login.
create index if not exists dashboard_sessions_expiry on loader_registry.dashboard_sessions (expires_at);
-- Removing a user, or changing its password, ends its sessions.
create index if not exists dashboard_sessions_user on loader_registry.dashboard_sessions (user_name);

-- What users did (approve, reject, rerun, upload, users add, ...), append-only.
-- user_name is not a reference: the log outlives the users it names.
create table if not exists loader_registry.dashboard_actions (
    action_id bigint generated always as identity primary key,
    user_name text not null,
    action text not null,
    target text not null,
    detail text,
    at timestamptz not null default clock_timestamp()
);

create or replace function loader_registry.refuse_action_change() returns trigger
language plpgsql as $$
begin
    raise exception 'loader_registry.dashboard_actions is append-only (% refused)', tg_op;
end;
$$;

create or replace trigger dashboard_actions_append_only
before update or delete on loader_registry.dashboard_actions
for each row execute function loader_registry.refuse_action_change();

create or replace trigger dashboard_actions_no_truncate
before truncate on loader_registry.dashboard_actions
for each statement execute function loader_registry.refuse_action_change();

-- Also where session_replication_role = replica, like the run history.
alter table loader_registry.dashboard_actions enable always trigger dashboard_actions_append_only;
alter table loader_registry.dashboard_actions enable always trigger dashboard_actions_no_truncate;

-- Dashboard: indexes its pages page through.
-- Run detail filters a run's exception report by entity and rule and counts
-- it by (entity, rule, severity): without this, each such query reads every
-- row of the run's report (30 ms at 400,000 rows; 1-2 ms with it). The runs
-- pages need nothing beyond the primary key at 10,000 runs (bench/README.md).
create index if not exists run_exceptions_rule on loader_registry.run_exceptions (run_id, entity, rule, row_number)
include (severity);

-- dbt tests that failed in a run, with sample failing rows.
-- The run's message keeps only a summary; support staff need each failed node
-- and a few of the rows a test found (read right after the build, before the
-- slot's next build replaces them). sample: up to 5 rows as JSON objects, each
-- value cut short; sample_columns: their column order (jsonb keeps none);
-- sample_note: why there is no sample (the query failed or timed out).
create table if not exists loader_registry.run_dbt_failures (
    run_id bigint not null references loader_registry.runs (run_id),
    node text not null,
    status text not null,
    message text not null,
    failing_rows bigint,
    sample jsonb,
    sample_columns text [],
    sample_note text,
    primary key (run_id, node)
);

-- Connectors: checkpoints, what each poll found and took (loader/connectors).
-- A checkpoint is the greatest load_id a connector took of a shop, compared
-- byte by byte (collate "C") whatever the database's collation: a poll takes
-- only loads above it, in that order. It only moves forward; `loader checkpoint
-- reset` is the one way back, and says who in loader.checkpoint_reset_by.
create table if not exists loader_registry.connector_checkpoints (
    system_code text not null check (system_code ~ '^[A-Za-z0-9._-]{1,64}$'),
    partner_id text not null,
    shop_id text not null,
    load_id text not null,
    -- NULL between the take and the submit of the load (see connector_taken).
    run_id bigint references loader_registry.runs (run_id),
    moved_at timestamptz,
    updated_at timestamptz not null default clock_timestamp(),
    primary key (system_code, partner_id, shop_id)
);

-- Every reset of a checkpoint, with who did it: the load_id it had is history.
create table if not exists loader_registry.connector_checkpoint_resets (
    reset_id bigint generated always as identity primary key,
    system_code text not null,
    partner_id text not null,
    shop_id text not null,
    load_id text not null,
    reset_by text not null,
    reset_at timestamptz not null default clock_timestamp()
);

-- Refused in the database, whichever code path (or person at psql) tries it:
-- a checkpoint moving back or staying put (a load taken twice), one moved to
-- another connector or shop, and a delete that no reset asked for.
create or replace function loader_registry.guard_connector_checkpoint() returns trigger
language plpgsql as $$
declare
    reset_by text := nullif(current_setting('loader.checkpoint_reset_by', true), '');
begin
    if tg_op = 'UPDATE' then
        if (new.system_code, new.partner_id, new.shop_id) is distinct from (old.system_code, old.partner_id, old.shop_id)
        then
            raise exception 'checkpoint %/%/% belongs to its connector and shop; reset it instead of moving it',
                old.system_code, old.partner_id, old.shop_id using errcode = 'check_violation';
        end if;
        if new.load_id collate "C" <= old.load_id collate "C" then
            raise exception 'checkpoint %/%/% only moves forward: % -> % refused (loader checkpoint reset replays)',
                old.system_code, old.partner_id, old.shop_id, old.load_id, new.load_id
                using errcode = 'check_violation';
        end if;
        return new;
    end if;
    if reset_by is null then
        raise exception 'checkpoint %/%/% is deleted only by loader checkpoint reset (loader.checkpoint_reset_by unset)',
            old.system_code, old.partner_id, old.shop_id using errcode = 'check_violation';
    end if;
    insert into loader_registry.connector_checkpoint_resets (system_code, partner_id, shop_id, load_id, reset_by)
    values (old.system_code, old.partner_id, old.shop_id, old.load_id, reset_by);
    return old;
end;
$$;

-- "of" these columns: recording the run a checkpoint's load was queued as is not a move.
create or replace trigger connector_checkpoints_forward_only
before update of system_code, partner_id, shop_id, load_id or delete on loader_registry.connector_checkpoints
for each row execute function loader_registry.guard_connector_checkpoint();

create or replace function loader_registry.refuse_connector_history_change() returns trigger
language plpgsql as $$
begin
    raise exception 'loader_registry.% is append-only (% refused)', tg_table_name, tg_op;
end;
$$;

-- A truncate would skip the row triggers: refused for both tables.
create or replace trigger connector_checkpoints_no_truncate
before truncate on loader_registry.connector_checkpoints
for each statement execute function loader_registry.refuse_connector_history_change();

create or replace trigger connector_checkpoint_resets_append_only
before update or delete on loader_registry.connector_checkpoint_resets
for each row execute function loader_registry.refuse_connector_history_change();

create or replace trigger connector_checkpoint_resets_no_truncate
before truncate on loader_registry.connector_checkpoint_resets
for each statement execute function loader_registry.refuse_connector_history_change();

-- Every load a connector took (the checkpoint is their high-water mark). Its
-- row is written, and the checkpoint moved, in one transaction before the load
-- is submitted: the primary key lets a load be taken once. run_id stays NULL
-- until the submit's own transaction committed; submitted_from is the
-- temporary folder it was submitted from (runs.submitted_from), which is how
-- a poll after a crash in between tells a queued load from one never queued.
-- moved_at: after_success was done, once the run completed.
create table if not exists loader_registry.connector_taken (
    system_code text not null,
    partner_id text not null,
    shop_id text not null,
    load_id text not null,
    run_id bigint references loader_registry.runs (run_id),
    submitted_from text not null,
    taken_at timestamptz not null default clock_timestamp(),
    moved_at timestamptz,
    primary key (system_code, partner_id, shop_id, load_id)
);

-- The loads whose after_success is still to do, and the takes a crash interrupted.
create index if not exists connector_taken_pending on loader_registry.connector_taken (system_code)
where moved_at is null;

-- A taken load is forgotten only with its checkpoint, by a reset.
create or replace function loader_registry.guard_connector_taken() returns trigger
language plpgsql as $$
begin
    if nullif(current_setting('loader.checkpoint_reset_by', true), '') is null then
        raise exception 'load %/%/% taken by % is forgotten only by loader checkpoint reset',
            old.partner_id, old.shop_id, old.load_id, old.system_code using errcode = 'check_violation';
    end if;
    return old;
end;
$$;

create or replace trigger connector_taken_reset_only
before delete on loader_registry.connector_taken
for each row execute function loader_registry.guard_connector_taken();

create or replace trigger connector_taken_no_truncate
before truncate on loader_registry.connector_taken
for each statement execute function loader_registry.refuse_connector_history_change();

-- Also where session_replication_role = replica, like the run history.
alter table loader_registry.connector_checkpoints enable always trigger connector_checkpoints_forward_only;
alter table loader_registry.connector_checkpoints enable always trigger connector_checkpoints_no_truncate;
alter table loader_registry.connector_checkpoint_resets enable always trigger connector_checkpoint_resets_append_only;
alter table loader_registry.connector_checkpoint_resets enable always trigger connector_checkpoint_resets_no_truncate;
alter table loader_registry.connector_taken enable always trigger connector_taken_reset_only;
alter table loader_registry.connector_taken enable always trigger connector_taken_no_truncate;

-- What each poll found, took, left waiting and skipped ({"where", "reason"}
-- each), and why it failed: `loader connectors` and the dashboard show the last.
create table if not exists loader_registry.connector_polls (
    poll_id bigint generated always as identity primary key,
    system_code text not null,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    found integer not null check (found >= 0),
    taken integer not null check (taken >= 0),
    waiting jsonb not null default '[]',
    skipped jsonb not null default '[]',
    error_reason text,
    error text
);

create index if not exists connector_polls_latest on loader_registry.connector_polls (system_code, poll_id desc);

-- A connector's last failed poll, found without reading back through every good one.
create index if not exists connector_polls_failed on loader_registry.connector_polls (system_code, poll_id desc)
where error_reason is not null;

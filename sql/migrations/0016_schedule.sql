-- 0016_schedule: cron schedules that start executions.
-- A schedule row says what to start (path, payload) and when (a 5-field cron expression in
-- a time zone); next_run_at is the next tick, computed by the client that adds or fires it.
-- schedule_run holds one row per fired tick: its primary key is what makes a tick start
-- exactly one execution however many workers see it due at once.

create table if not exists noetl.schedule (
    schedule_id bigint generated always as identity primary key,
    path text not null,
    cron text not null,
    timezone text not null default 'UTC',
    payload jsonb not null default '{}',
    missed_policy text not null default 'skip'
    constraint schedule_missed_policy_check check (missed_policy in ('skip', 'catch_up')),
    paused boolean not null default false,
    next_run_at timestamptz not null,
    last_run_at timestamptz,
    last_execution_id bigint,
    created_at timestamptz not null default now()
);

create index if not exists schedule_due_idx
on noetl.schedule (next_run_at) where not paused;

create table if not exists noetl.schedule_run (
    schedule_id bigint not null references noetl.schedule (schedule_id) on delete cascade,
    scheduled_for timestamptz not null,
    execution_id bigint,
    error text,
    fired_at timestamptz not null default now(),
    primary key (schedule_id, scheduled_for)
);

create index if not exists schedule_run_execution_idx
on noetl.schedule_run (execution_id) where execution_id is not null;

comment on table noetl.schedule is
'Cron schedules: path and payload to start, cron expression, time zone, missed-tick policy '
'(skip or catch_up) and the next tick (next_run_at).';
comment on table noetl.schedule_run is
'One row per fired tick of a schedule (primary key schedule_id, scheduled_for: a tick '
'starts one execution), with the execution it started or the error that stopped it.';

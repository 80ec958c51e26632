-- dispatch.sql: putting commands on the queue and claiming them.

-- noetl.due_work_queued(kinds) -> boolean
-- Contract: whether a due command of `kinds` (NULL: any) is queued: the head of the queue
--   as a finishing worker reads it before it takes the work its outcomes issue (queued
--   work is older and keeps its turn: open_issue_claims, finish_plain_step,
--   finish_loop_batch).
-- Locks: none.
create or replace function noetl.due_work_queued(p_kinds text[])
returns boolean
language plpgsql
stable
as $$
begin
    return exists (
        select 1 from noetl.command as q
        where q.status = 'queued' and q.available_at <= noetl.now()
            and (p_kinds is null or q.kind = any(p_kinds))
    );
end;
$$;

-- noetl.open_issue_claims(worker_id, kinds, n) -> void
-- Contract: for the rest of this transaction, the next `n` commands issue_command creates
--   without a claimer, of `kinds` (NULL: any), are created claimed by `worker_id`: the
--   finishing worker takes the steps its outcomes issue, as it takes the loop iterations
--   they issue, instead of queueing them for a claim scan and a wake-up. Only while no
--   due work of those kinds is queued: queued work is older and keeps its turn (claims
--   are oldest first), so a worker busy with chains does not starve executions waiting
--   in the queue. Transaction-local settings carry this through the routing functions
--   (as noetl.defer_notify does), so their signatures stay those of every other caller.
--   close_issue_claims ends it. Whether that due work was found is kept too
--   (`noetl.issue_queue_empty`, 'on' when none was): finish_and_claim then skips its own
--   queue scan unless the outcomes queued something (a scan a few statements later would
--   find what another transaction committed since, which that one's NOTIFY hands out).
-- Locks: none (reads the head of the queue).
create or replace function noetl.open_issue_claims(
    p_worker_id text,
    p_kinds text[],
    p_n integer
) returns void
language plpgsql
as $$
declare
    v_n integer := greatest(coalesce(p_n, 0), 0);
    -- Unknown (off) when not looked at.
    v_queue_empty boolean := false;
begin
    if v_n > 0 then
        v_queue_empty := not noetl.due_work_queued(p_kinds);
        if not v_queue_empty then
            v_n := 0;
        end if;
    end if;
    -- One statement for the settings (a PERFORM each cost an executor start).
    perform
        set_config('noetl.issue_claimer', coalesce(p_worker_id, ''), true),
        set_config(
            'noetl.issue_claim_kinds', coalesce(array_to_string(p_kinds, ','), '*'), true
        ),
        set_config('noetl.issue_claims_left', v_n::text, true),
        set_config('noetl.issue_claimed', '', true),
        set_config(
            'noetl.issue_queue_empty', case when v_queue_empty then 'on' else 'off' end, true
        );
end;
$$;

-- noetl.take_issue_claim(kind) -> worker_id | null
-- Contract: the worker a new command of `kind` is to be created claimed by (see
--   open_issue_claims), counting it against the budget; NULL when none is open, the
--   budget is spent or that worker does not serve `kind`.
-- Locks: none.
create or replace function noetl.take_issue_claim(p_kind text)
returns text
language plpgsql
as $$
declare
    v_left integer := coalesce(
        nullif(current_setting('noetl.issue_claims_left', true), '')::integer, 0
    );
    v_kinds text := current_setting('noetl.issue_claim_kinds', true);
begin
    if v_left <= 0
        or (v_kinds <> '*' and not p_kind = any(string_to_array(v_kinds, ','))) then
        return null;
    end if;
    perform set_config('noetl.issue_claims_left', (v_left - 1)::text, true);
    return nullif(current_setting('noetl.issue_claimer', true), '');
end;
$$;

-- noetl.close_issue_claims() -> bigint[]
-- Contract: ends what open_issue_claims opened and returns the ids of the commands created
--   claimed under it that are still to run, in the order they were issued. One whose
--   execution ended later in this transaction (the command that went past the budget
--   failed it, noetl.count_command) is cancelled, as fail_execution cancels the queued.
-- Locks: those command rows (UPDATE), under their execution's lock the caller holds.
-- Plans: one per session, of index probes by key (plan_cache_mode, enable_seqscan, as in
--   describe_commands_v1): a plan made while noetl.command was a few pages, kept by the
--   plan cache, read the whole table on every call as it grew (a chain of n steps read
--   ~n^2/2 rows).
create or replace function noetl.close_issue_claims()
returns bigint[]
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
as $$
declare
    v_ids bigint[] := coalesce(
        string_to_array(nullif(current_setting('noetl.issue_claimed', true), ''), ',')::bigint[],
        '{}'
    );
begin
    perform
        set_config('noetl.issue_claims_left', '0', true),
        set_config('noetl.issue_claimed', '', true);
    if cardinality(v_ids) = 0 then
        return v_ids;
    end if;
    -- The usual case, every execution still running, is one read.
    if not exists (
        select 1 from noetl.command as c
        inner join noetl.execution as e on c.execution_id = e.execution_id
        where c.command_id = any(v_ids) and e.status <> 'RUNNING'
    ) then
        return v_ids;
    end if;
    update noetl.command as c
    set status = 'cancelled', finished_at = noetl.now()
    where c.command_id = any(v_ids)
        -- `is true`: found by key, not through a status index (docs/architecture.md)
        and (c.status = 'claimed') is true
        and not noetl.execution_is_running(c.execution_id);
    return array(
        select u.id from unnest(v_ids) with ordinality as u (id, position)
        inner join noetl.command as c on u.id = c.command_id
        where c.status = 'claimed'
        order by u.position
    );
end;
$$;

-- noetl.issue_command(execution_id, command_key, kind, step_name, max_attempts, loop_id,
--                     iter_index, input, claimed_by) -> command_id | null
-- Contract: inserts one command and its `command.issued` event in the caller's
--   transaction. The key is deterministic (it names the cause), so issuing the same key
--   twice is a no-op that returns NULL. With `claimed_by` the command is created already
--   claimed by that worker (the route fast path) and no NOTIFY is sent; without, it is
--   created claimed by the finishing worker while open_issue_claims's budget lasts (listed
--   for close_issue_claims), else queued and workers are woken through notify_queue. A
--   command created claimed has no `command.claimed` event: its `command.issued` names
--   the worker (meta.worker_id), issued and claimed being one happening.
-- Locks: the unique index entry of (execution_id, command_key).
create or replace function noetl.issue_command(
    p_execution_id bigint,
    p_command_key text,
    p_kind text,
    p_step_name text,
    p_max_attempts integer default 1,
    p_loop_id bigint default null,
    p_iter_index integer default null,
    p_input jsonb default null,
    p_claimed_by text default null
) returns bigint
language plpgsql
as $$
declare
    v_command_id bigint;
    v_claimer text := coalesce(p_claimed_by, noetl.take_issue_claim(p_kind));
begin
    insert into noetl.command (
        execution_id, command_key, kind, step_name, max_attempts, loop_id, iter_index,
        input, status, claimed_by, claimed_at
    )
    values (
        p_execution_id, p_command_key, p_kind, p_step_name, p_max_attempts, p_loop_id,
        p_iter_index, p_input,
        case when v_claimer is null then 'queued' else 'claimed' end,
        v_claimer,
        case when v_claimer is null then null else noetl.now() end
    )
    on conflict on constraint command_key_unique do nothing
    returning command_id into v_command_id;

    if v_command_id is null then
        return null;
    end if;

    perform noetl.record_event(
        p_execution_id, 'command.issued', p_step_name, v_command_id, 1,
        null, null,
        jsonb_build_object('kind', p_kind, 'command_key', p_command_key)
        || case
            when v_claimer is not null then jsonb_build_object('worker_id', v_claimer)
            else '{}'::jsonb
        end,
        p_loop_id, p_iter_index
    );
    if v_claimer is null then
        perform noetl.notify_queue(p_kind);
    elsif p_claimed_by is null then
        perform set_config('noetl.issue_claimed', concat_ws(
            ',', nullif(current_setting('noetl.issue_claimed', true), ''), v_command_id
        ), true);
    end if;
    return v_command_id;
end;
$$;

-- noetl.requeue_commands(command_ids, next_attempt, delay_seconds, reclaim, wake) -> integer
-- Contract: the one way a command goes back on the queue after its claim: each of
--   `command_ids` becomes 'queued' again, unclaimed (claimed_by, claimed_at, finished_at
--   cleared), due after `delay_seconds` (NULL or negative: now); at attempt + 1 when
--   `next_attempt` (a retry: fail_command, a fan-out shard that failed), else at the same
--   attempt (a claim taken back or handed back: the reaper, stop_worker, a pipeline resumed
--   after its child); reclaims + 1 when `reclaim` (its worker died holding it). The caller
--   has checked that each command is its own to put back (its claim is fenced, or it
--   failed in this transaction). (resume_execution, which re-issues finished commands with
--   room for a new attempt in max_attempts, has its own rule.) With `wake`,
--   workers are woken once (notify_queue) when any went back; a caller requeueing several
--   times in one transaction passes false and wakes once itself. Returns how many went
--   back. Writes no event: the caller records why (command.retried, command.reaped, ...).
-- Locks: the command rows (UPDATE); callers hold them already, taken in the lock order.
create or replace function noetl.requeue_commands(
    p_command_ids bigint[],
    p_next_attempt boolean default false,
    p_delay_seconds double precision default 0,
    p_reclaim boolean default false,
    p_wake boolean default true
) returns integer
language plpgsql
as $$
declare
    v_requeued integer;
begin
    update noetl.command as c
    set status = 'queued',
        attempt = c.attempt + p_next_attempt::integer,
        available_at = noetl.now()
        + make_interval(secs => greatest(coalesce(p_delay_seconds, 0), 0)),
        claimed_by = null,
        claimed_at = null,
        finished_at = null,
        reclaims = c.reclaims + p_reclaim::integer
    where c.command_id = any(p_command_ids);
    get diagnostics v_requeued = row_count;
    if p_wake and v_requeued > 0 then
        perform noetl.notify_queue();
    end if;
    return v_requeued;
end;
$$;

-- noetl.issue_step(execution_id, catalog_id, step_name, cause) -> command_id
-- Contract: issues the command that runs `step_name` once for `cause` (a string naming
--   what led here, e.g. the source command id): reads the step's plan and calls
--   issue_planned_step. Returns NULL when the same cause issued it already.
-- Locks: as issue_command.
-- Failure modes: raises when the step is not in the playbook's plan.
create or replace function noetl.issue_step(
    p_execution_id bigint,
    p_catalog_id bigint,
    p_step_name text,
    p_cause text
) returns bigint
language plpgsql
as $$
declare
    v_step noetl.catalog_step;
begin
    select * into v_step
    from noetl.catalog_step as s
    where s.catalog_id = p_catalog_id and s.step_name = p_step_name;
    if not found then
        raise exception 'execution %: step "%" is not in the playbook', p_execution_id,
            p_step_name using errcode = '22023';
    end if;
    return noetl.issue_planned_step(p_execution_id, v_step, p_cause);
end;
$$;

-- noetl.issue_planned_step(execution_id, step, cause) -> command_id
-- Contract: issue_step for a caller that has already read the step's plan row (arrive),
--   so a transition reads each plan once. A loop step is issued as a 'loop' command whose
--   worker renders the collection and calls noetl.start_loop. Returns NULL when the same
--   cause issued it already.
-- Locks: as issue_command.
create or replace function noetl.issue_planned_step(
    p_execution_id bigint,
    p_step noetl.catalog_step,
    p_cause text
) returns bigint
language plpgsql
as $$
begin
    return noetl.issue_command(
        p_execution_id,
        p_step.step_name || '@' || p_cause,
        case when p_step.has_loop then 'loop' else p_step.tool_kind end,
        p_step.step_name,
        case when p_step.has_loop then 1 else p_step.max_attempts end
    );
end;
$$;

-- Return types changed (claim_gen, then noetl.claimed_command): drop the old shapes
-- before re-creating them. The unversioned claim_commands and describe_commands are
-- re-created as wrappers (worker_compat.sql).
drop function if exists noetl.claim_commands(text, text[], integer);
drop function if exists noetl.describe_commands(bigint[]);

-- noetl.claim_commands_v1(worker_id, kinds, n) -> setof noetl.claimed_command
-- Worker protocol v1 (the unversioned claim_commands calls it, for older workers).
-- Contract: claims up to `n` queued commands that are due (available_at <= noetl.now()), whose
--   kind is in `kinds` (NULL: any kind), highest priority then oldest first, marks them
--   claimed by `worker_id`, writes one `command.claimed` event each, and returns them.
--   `context` (see command_context) is filled on the first row of each group of rows with
--   the same (execution_id, step_name, kind, loop_id is null) in the batch and NULL on the
--   others: the caller reuses it for that group's other rows. It holds only the results
--   the step reads (noetl.command_reads).
--   Loop iterations carry their item in `item`; `claim_gen` is the claim's fencing token,
--   which the worker's outcome names (see finish_and_claim).
-- Locks: FOR UPDATE SKIP LOCKED on the chosen queue rows (in claim_command_ids), so
--   concurrent claimers never wait on each other and never get the same command.
create or replace function noetl.claim_commands_v1(
    p_worker_id text,
    p_kinds text[] default null,
    p_n integer default 1
) returns setof noetl.claimed_command
language plpgsql
as $$
declare
    v_ids bigint[];
begin
    v_ids := noetl.claim_command_ids(p_worker_id, p_kinds, p_n);
    -- A separate statement, so a fresh snapshot. In one statement the STABLE
    -- describe_commands_v1 would read with the snapshot taken before the claim, miss rows
    -- committed in between that the claim did take, and leave them claimed but never run.
    return query select * from noetl.describe_commands_v1(v_ids);
end;
$$;

-- noetl.describe_commands_v1(command_ids) -> setof noetl.claimed_command
-- Worker protocol v1 (the unversioned describe_commands calls it, for older workers).
-- Contract: the claim payload of the given commands (ordered by command_id), with the
--   context on the first row of each (execution_id, step_name, kind, loop_id is null)
--   group, holding what that step reads (command_reads). Used by claim_commands_v1, by
--   completion when it creates a route command already claimed by the completing worker,
--   and by a worker for the iterations a cursor claim created claimed by it.
--   One plan per session (plan_cache_mode): as in lock_executions, the plan cache chose
--   a custom plan and planned this query on every call, which cost more than running it
--   (~1 ms on 2,000 executions). Nested loops of index scans only: for "ten rows" the
--   generic plan would merge-join the whole execution index, or keep scanning a table
--   that was small when planned; a few commands want a few index probes, each step's
--   plan row by its whole key (catalog_id, step_name), whatever the playbook's size.
-- Locks: none.
create or replace function noetl.describe_commands_v1(p_command_ids bigint[])
returns setof noetl.claimed_command
language plpgsql
stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
as $$
-- plpgsql rather than sql: a set-returning SQL function is planned on every call, and this
-- one runs on every claim (measured: most of the 0.6 ms of a 25-row claim).
begin
    -- Each step's plan row is looked up by its whole key (`offset 0`, or a subquery of
    -- its own): as a join, the plan probed catalog_step by catalog_id alone and filtered
    -- the steps by name.
    -- One command (a chain's next step): its own group, no window or sorts to set up.
    if cardinality(p_command_ids) = 1 then
        return query
        select
            c.command_id, c.execution_id, e.catalog_id, c.step_name, c.kind, c.attempt,
            c.loop_id, c.iter_index, c.input, li.item_value,
            noetl.command_context(
                c.execution_id,
                noetl.command_reads(c.kind, c.step_name, s.reads, s.loop_reads)
            ),
            c.claim_gen
        from noetl.command as c
        inner join noetl.execution as e on c.execution_id = e.execution_id
        left join lateral (
            select s.reads, s.loop_reads from noetl.catalog_step as s
            where s.catalog_id = e.catalog_id and s.step_name = c.step_name
            offset 0
        ) as s on true
        left join noetl.loop_item as li
            on c.loop_id = li.loop_id and c.iter_index = li.iter_index
        where c.command_id = p_command_ids[1];
        return;
    end if;
    return query
    select
        c.command_id,
        c.execution_id,
        e.catalog_id,
        c.step_name,
        c.kind,
        c.attempt,
        c.loop_id,
        c.iter_index,
        c.input,
        li.item_value,
        -- The step's plan row is read for the row that carries the context only (a subplan
        -- in a CASE branch runs when the branch is taken): a batch of one loop's
        -- iterations reads it once, not once per row (3 buffers a row).
        case
            when row_number() over (
                partition by c.execution_id, c.step_name, c.kind, c.loop_id is null
                order by c.command_id
            ) = 1
                then noetl.command_context(
                    c.execution_id,
                    -- One row, with NULL reads for a step the plan does not have (as
                    -- the single command's left join gives).
                    (
                        select noetl.command_reads(c.kind, c.step_name, s.reads, s.loop_reads)
                        from (values (true)) as one (present)
                        left join noetl.catalog_step as s
                            on s.catalog_id = e.catalog_id and s.step_name = c.step_name
                    )
                )
        end,
        c.claim_gen
    from noetl.command as c
    inner join noetl.execution as e on c.execution_id = e.execution_id
    left join noetl.loop_item as li
        on c.loop_id = li.loop_id and c.iter_index = li.iter_index
    where c.command_id = any(p_command_ids)
    order by c.command_id;
end;
$$;

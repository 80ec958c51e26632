-- plain_step.sql: the commonest transition, a plain step done and the one plain step its
-- unconditional arc names (or the one arc its worker chose of its conditional arcs) issued
-- to the same worker, in a few statements.
--
-- finish_and_claim_v1 tries this before its general path (complete_command, route_after,
-- arrive, issue_command, describe_commands_v1): measured on a 2-core machine, that path
-- spends ~0.6 ms of a chain step in ~20 nested PL/pgSQL calls and ~40 statements, of
-- which the executor start-ups and the re-reads of rows this transaction already has are
-- most. The events, rows and claim written here are those the general path writes for the
-- same outcome (tests/sql/106_plain_step_test.sql compares the two); whatever this path
-- does not cover it declines before writing anything, and the general path runs.

-- noetl.finish_plain_step(worker_id, outcome, kinds) -> (applied, next_command)
-- Contract: applies one `done` outcome (finish_and_claim_v1's {op, command_id, attempt,
--   claim, result, ctx_set, targets}) when all of these hold, and declines (applied false,
--   nothing written) otherwise:
--   - the command is a step's (not a loop iteration; not a route, loop or cursor command)
--     and is still claimed at `attempt` and, when given, claim generation `claim`;
--   - its execution is RUNNING;
--   - the step's plan has exactly one unconditional arc ('direct'), or has conditional
--     arcs ('router') of which the worker, serving routes (`kinds` NULL or naming
--     'route'), chose exactly one (`targets`, [{step, set}], as route_after takes them);
--     the arc names a step that is neither a join nor a loop, of a kind in `kinds`
--     (NULL: any);
--   - in a playbook with join steps, check_progress (route_after's, after arcs in such a
--     playbook) has nothing to do: the arc is unconditional and names the step's only
--     successor (the joins the finished step could reach are the ones that successor
--     can, it is active now, and no arrival was added), or no arrival waits for a join
--     (checked under the execution's lock: only a waiting arrival can be issued, and
--     with the successor active the execution does not end);
--   - no due command of `kinds` is queued (open_issue_claims's rule: queued work is older
--     and keeps its turn).
--   Applied: writes `call.done` (and for chosen arcs `route.applied`, marked fused),
--   merges ctx_set and then the arc's `set`, keeps the step's result, issues the
--   target as "<target>@<command_id>" created claimed by `worker_id` (its
--   `command.issued` names the worker) and returns it as the worker receives a claim, its
--   context being what the target reads. next_command is NULL when the arc was taken
--   already (check_progress then runs, as route_after does) or when the new command took
--   the execution past its budget (count_command failed the execution; the command is
--   cancelled, as close_issue_claims does).
-- Events: call.done, [route.applied,] command.issued, with the ids the general path gives
--   them (those before command.issued are taken before the insert whose budget trigger
--   may fail the execution).
-- Locks: in the lock order, the execution row (a child's with its ancestors first,
--   lock_executions), then the command row (the fenced update); the unique key of the
--   new command; the budget row (count_command). A declined outcome may leave the
--   execution rows locked; the general path locks them next.
-- Plans: one per session, index probes by key only (plan_cache_mode, enable_seqscan and
--   the join settings, as describe_commands_v1: a plan kept from a small table must not
--   scan it whole as it grows).
create or replace function noetl.finish_plain_step(
    p_worker_id text,
    p_outcome jsonb,
    p_kinds text[],
    out applied boolean,
    out next_command noetl.claimed_command
)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
as $$
declare
    v_id bigint := (p_outcome ->> 'command_id')::bigint;
    v_attempt integer := (p_outcome ->> 'attempt')::integer;
    v_claim integer := (p_outcome ->> 'claim')::integer;
    v_result jsonb := p_outcome -> 'result';
    v_ctx_set jsonb := nullif(p_outcome -> 'ctx_set', 'null'::jsonb);
    -- The arcs the worker chose count only for a worker that serves routes
    -- (finish_and_claim_v1's rule); one chosen arc is the one this path takes.
    v_targets jsonb := case
        when p_kinds is null or 'route' = any(p_kinds) then
            nullif(p_outcome -> 'targets', 'null'::jsonb)
    end;
    v_chosen text := case
        when jsonb_typeof(v_targets) = 'array' and jsonb_array_length(v_targets) = 1 then
            v_targets -> 0 ->> 'step'
    end;
    v_arc_set jsonb;
    v_route_event bigint;
    v_plan record;
    v_cmd noetl.command;
    v_done_event bigint;
    v_next bigint;
    v_key text;
begin
    applied := false;
    -- What decides whether this path applies: the command's, its execution's and both
    -- plans' columns that never change, read before any lock; the queue's head as
    -- open_issue_claims reads it.
    select
        c.execution_id, c.step_name, c.kind, c.loop_id,
        e.parent_execution_id is null as root, s.successors,
        e.catalog_id, s.route_mode, s.direct_targets, arc.target,
        exists (
            select 1 from noetl.catalog_step as j
            where j.catalog_id = e.catalog_id and j.is_join
        ) as has_join,
        noetl.due_work_queued(p_kinds) as queue_busy
    into v_plan
    from noetl.command as c
    inner join noetl.execution as e on c.execution_id = e.execution_id
    -- `offset 0`: both plan rows looked up by their whole key (describe_commands_v1's
    -- reason; joined, a plan made without statistics filtered the playbook's steps).
    cross join lateral (
        select s.successors, s.route_mode, s.direct_targets from noetl.catalog_step as s
        where s.catalog_id = e.catalog_id and s.step_name = c.step_name
        offset 0
    ) as s
    left join lateral (
        select t from noetl.catalog_step as t
        where
            t.catalog_id = e.catalog_id
            and t.step_name = case s.route_mode
                when 'direct' then s.direct_targets[1]
                when 'router' then v_chosen
            end
        offset 0
    ) as arc (target) on true
    where c.command_id = v_id;
    if not found
        or v_plan.loop_id is not null
        or v_plan.kind in ('route', 'loop', 'cursor')
        or (v_plan.route_mode = 'direct' and cardinality(v_plan.direct_targets) <> 1)
        -- No target: a step without arcs, no arc chosen, or one naming no step.
        or (v_plan.target).step_name is null
        or (v_plan.target).is_join
        or (v_plan.target).has_loop
        or v_plan.queue_busy
        or (p_kinds is not null and not (v_plan.target).tool_kind = any(p_kinds)) then
        return;
    end if;

    if not noetl.lock_running_execution(v_plan.execution_id, v_plan.root) then
        return;
    end if;
    -- Arrivals are written under the execution's lock, so this read holds until commit.
    if v_plan.has_join
        and (v_plan.route_mode <> 'direct' or v_plan.successors <> v_plan.direct_targets)
        and exists (
            select 1 from noetl.join_arrival as a
            where a.execution_id = v_plan.execution_id and a.consumed_by is null
        ) then
        return;
    end if;
    -- The fence (complete_command's): NULLs fence nothing. A refused outcome is declined,
    -- and the general path records the refusal.
    update noetl.command as c
    set status = 'done', finished_at = noetl.now()
    where
        c.command_id = v_id
        -- `is true`: found by key, not through a status index (docs/architecture.md)
        and (c.status = 'claimed') is true
        and coalesce(c.attempt = v_attempt, true)
        and coalesce(c.claim_gen = v_claim, true)
    returning c.* into v_cmd;
    if not found then
        return;
    end if;
    applied := true;
    v_done_event := nextval('noetl.event_id_seq');
    if v_plan.route_mode = 'router' then
        v_route_event := nextval('noetl.event_id_seq');
        v_arc_set := nullif(v_targets -> 0 -> 'set', 'null'::jsonb);
    end if;

    -- ctx_set, then the arc's `set` (complete_command's merge, then arrive's), in one update.
    if coalesce(v_ctx_set, '{}'::jsonb) <> '{}'::jsonb
        or coalesce(v_arc_set, '{}'::jsonb) <> '{}'::jsonb then
        update noetl.execution as e
        set ctx = e.ctx || coalesce(v_ctx_set, '{}'::jsonb) || coalesce(v_arc_set, '{}'::jsonb)
        where e.execution_id = v_cmd.execution_id;
    end if;
    perform noetl.store_step_result(v_cmd.execution_id, v_cmd.step_name, v_id, v_result);

    v_key := (v_plan.target).step_name || '@' || v_id;
    insert into noetl.command (
        execution_id, command_key, kind, step_name, max_attempts, status, claimed_by,
        claimed_at
    )
    values (
        v_cmd.execution_id, v_key, (v_plan.target).tool_kind, (v_plan.target).step_name,
        (v_plan.target).max_attempts, 'claimed', p_worker_id, noetl.now()
    )
    on conflict on constraint command_key_unique do nothing
    returning command_id into v_next;

    perform noetl.record_events(array[
        row(
            v_cmd.execution_id, 'call.done', v_cmd.step_name, v_id, v_attempt, v_result,
            null, null, null, null, v_done_event
        )::noetl.event_record
    ] || case when v_route_event is not null then array[
        row(
            v_cmd.execution_id, 'route.applied', v_cmd.step_name, v_id, v_cmd.attempt, null,
            null,
            jsonb_build_object('event', 'call.done', 'targets', v_targets, 'fused', true),
            null, null, v_route_event
        )::noetl.event_record
    ] else '{}' end || case when v_next is not null then array[
        row(
            v_cmd.execution_id, 'command.issued', (v_plan.target).step_name, v_next, 1,
            null, null,
            jsonb_build_object(
                'kind', (v_plan.target).tool_kind, 'command_key', v_key,
                'worker_id', p_worker_id
            ),
            null, null, null
        )::noetl.event_record
    ] else '{}' end);

    if v_next is null then
        perform noetl.check_progress(v_cmd.execution_id, v_cmd.step_name);
        return;
    end if;
    -- count_command (the insert's trigger) fails the execution that went past its budget.
    if not noetl.execution_is_running(v_cmd.execution_id) then
        update noetl.command as c
        set status = 'cancelled', finished_at = noetl.now()
        where c.command_id = v_next;
        return;
    end if;
    next_command := row(
        v_next, v_cmd.execution_id, v_plan.catalog_id, (v_plan.target).step_name,
        (v_plan.target).tool_kind, 1, null, null, null, null,
        noetl.command_context(
            v_cmd.execution_id,
            noetl.command_reads(
                (v_plan.target).tool_kind, (v_plan.target).step_name,
                (v_plan.target).reads, (v_plan.target).loop_reads
            )
        ),
        0
    )::noetl.claimed_command;
end;
$$;

-- routing.sql: what happens after a step finishes, joins, and the end of an execution.

-- noetl.route_after(command, event_name, error, worker_id, targets) -> route_command_id
-- Contract: applies the step's plan after `event_name` ('call.done', 'call.error' or
--   'loop.done'). Unconditional arcs ('direct') are applied here, in the caller's
--   transaction. Conditional arcs ('router') after 'call.done' with `targets` (the arcs the
--   completing worker evaluated, [{step, set}], as apply_route takes them) are applied
--   here too, with a `route.applied` event on the source command: no route command, no
--   extra transaction. Otherwise conditional arcs get a route command keyed by the source
--   command, so it exists once; with `worker_id` it is created claimed by that worker and
--   its id returned. A 'call.error' with no conditional arcs fails the execution.
--   Nothing is routed once the execution is no longer RUNNING. check_progress follows,
--   except after arcs that issued a plain step in a playbook without join steps: a
--   command is then active and no arrival can wait, so it would find nothing to do.
-- Locks: the execution row (check_progress), which the caller holds already: every
--   caller took its command's locks in the lock order first.
-- Failure modes: raises no_data_found (P0002) when the command's step is not in its
--   execution's playbook.
create or replace function noetl.route_after(
    p_cmd noetl.command,
    p_event text,
    p_error text,
    p_worker_id text,
    p_targets jsonb default null
) returns bigint
language plpgsql
as $$
declare
    v_catalog_id bigint;
    v_read record;
    v_step noetl.catalog_step;
    v_target text;
    v_chosen jsonb;
    v_route_id bigint;
    -- A plain step these arcs issued (arrive), if any.
    v_issued bigint;
begin
    -- One read for this transition: whether the execution still runs (execution_is_running's
    -- test) and the step's plan (its catalog_id names the playbook).
    select e.status = 'RUNNING' as running, s as step into v_read
    from noetl.execution as e
    left join noetl.catalog_step as s
        on e.catalog_id = s.catalog_id and s.step_name = p_cmd.step_name
    where e.execution_id = p_cmd.execution_id;
    if not coalesce(v_read.running, false) then
        return null;
    end if;
    if (v_read.step).catalog_id is null then
        raise exception 'execution %: step "%" is not in the playbook', p_cmd.execution_id,
            p_cmd.step_name using errcode = 'P0002';
    end if;
    v_step := v_read.step;
    v_catalog_id := v_step.catalog_id;

    if v_step.route_mode = 'router' and p_event = 'call.done' and p_targets is not null then
        perform noetl.record_event(
            p_cmd.execution_id, 'route.applied', p_cmd.step_name, p_cmd.command_id,
            p_cmd.attempt, null, null,
            jsonb_build_object('event', p_event, 'targets', p_targets, 'fused', true)
        );
        for v_chosen in select value from jsonb_array_elements(p_targets) loop
            v_issued := coalesce(noetl.arrive(
                p_cmd.execution_id, v_catalog_id, v_chosen ->> 'step', p_cmd.command_id,
                nullif(v_chosen -> 'set', 'null'::jsonb)
            ), v_issued);
        end loop;
    elsif v_step.route_mode = 'router' then
        v_route_id := noetl.issue_command(
            p_cmd.execution_id,
            'route@' || p_cmd.command_id,
            'route',
            p_cmd.step_name,
            1,
            null,
            null,
            jsonb_build_object(
                'event', p_event, 'source_command_id', p_cmd.command_id, 'error', p_error
            ),
            p_worker_id
        );
    elsif p_event = 'call.error' then
        perform noetl.fail_execution(p_cmd.execution_id, p_cmd.step_name, p_error);
        return null;
    elsif v_step.route_mode = 'direct' then
        foreach v_target in array v_step.direct_targets loop
            v_issued := coalesce(noetl.arrive(
                p_cmd.execution_id, v_catalog_id, v_target, p_cmd.command_id, null
            ), v_issued);
        end loop;
    end if;

    if v_issued is null or exists (
        select 1 from noetl.catalog_step as s
        where s.catalog_id = v_catalog_id and s.is_join
    ) then
        perform noetl.check_progress(p_cmd.execution_id, p_cmd.step_name);
    end if;
    return case when p_worker_id is null then null else v_route_id end;
end;
$$;

-- arrive returned void before: the old one is dropped (its return type changed), the
-- current one left in place.
do $$
begin
    if exists (
        select 1 from pg_proc as p
        where p.oid = to_regprocedure('noetl.arrive(bigint, bigint, text, bigint, jsonb)')
            and p.prorettype = 'void'::regtype
    ) then
        drop function noetl.arrive(bigint, bigint, text, bigint, jsonb);
    end if;
end
$$;

-- noetl.arrive(execution_id, catalog_id, target, source_command_id, arc_set)
--   -> command_id | null
-- Contract: an arc from the command `source_command_id` reaches `target`. A plain step is
--   issued at once (after the arc's `set` writes are merged into ctx) with the cause
--   "<target>@<source>", so the same arc taken twice issues one command; its id is
--   returned (NULL for the arc taken again). A join step only records the arrival (NULL);
--   check_progress issues it when no started branch can still reach it.
-- Locks: the unique keys of command and join_arrival.
create or replace function noetl.arrive(
    p_execution_id bigint,
    p_catalog_id bigint,
    p_target text,
    p_source_command_id bigint,
    p_arc_set jsonb
) returns bigint
language plpgsql
as $$
declare
    v_step noetl.catalog_step;
begin
    select * into v_step
    from noetl.catalog_step as s
    where s.catalog_id = p_catalog_id and s.step_name = p_target;
    if not found then
        raise exception 'execution %: arc target "%" is not a step', p_execution_id, p_target
            using errcode = '22023';
    end if;

    if v_step.is_join then
        insert into noetl.join_arrival (execution_id, step_name, source_command_id, arc_set)
        values (p_execution_id, p_target, p_source_command_id, p_arc_set)
        on conflict do nothing;
        return null;
    end if;

    if p_arc_set is not null and p_arc_set <> '{}'::jsonb then
        update noetl.execution as e
        set ctx = e.ctx || p_arc_set
        where e.execution_id = p_execution_id;
    end if;
    -- The plan row read above: a transition reads the target's plan once.
    return noetl.issue_planned_step(p_execution_id, v_step, p_source_command_id::text);
end;
$$;

-- noetl.apply_route(command_id, attempt, targets) -> outcome
-- Contract: finishes a route command with the arcs its router chose, given as
--   [{step, set}] in arc order (the router already applied exclusive/inclusive and
--   rendered each `set`). Each chosen step is issued at most once (keys name the source
--   command). For a 'call.error' route with no chosen arc the execution fails with the
--   step's error. Writes `route.applied`. Returns 'ok', or 'stale' like complete_command.
-- Locks: in the lock order, the execution (with ancestors) then the route command row
--   (lock_claimed_command).
create or replace function noetl.apply_route(
    p_command_id bigint,
    p_attempt integer,
    p_targets jsonb
) returns text
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_catalog_id bigint;
    v_event text;
    v_source bigint;
    v_target jsonb;
begin
    v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt, 'route');
    if v_cmd.command_id is null then
        return 'stale';
    end if;

    update noetl.command as c
    set status = 'done', finished_at = noetl.now()
    where c.command_id = p_command_id;

    v_event := v_cmd.input ->> 'event';
    v_source := (v_cmd.input ->> 'source_command_id')::bigint;
    perform noetl.record_event(
        v_cmd.execution_id, 'route.applied', v_cmd.step_name, p_command_id, p_attempt,
        null, null,
        jsonb_build_object('event', v_event, 'targets', coalesce(p_targets, '[]'::jsonb))
    );

    if not noetl.execution_is_running(v_cmd.execution_id) then
        return 'ok';
    end if;
    select e.catalog_id into v_catalog_id
    from noetl.execution as e
    where e.execution_id = v_cmd.execution_id;

    if v_event = 'call.error' and coalesce(jsonb_array_length(p_targets), 0) = 0 then
        perform noetl.fail_execution(
            v_cmd.execution_id, v_cmd.step_name, v_cmd.input ->> 'error'
        );
        return 'ok';
    end if;

    for v_target in select value from jsonb_array_elements(coalesce(p_targets, '[]')) loop
        perform noetl.arrive(
            v_cmd.execution_id, v_catalog_id, v_target ->> 'step', v_source,
            nullif(v_target -> 'set', 'null'::jsonb)
        );
    end loop;

    perform noetl.check_progress(v_cmd.execution_id, v_cmd.step_name);
    return 'ok';
end;
$$;

-- noetl.check_progress(execution_id, last_step) -> void
-- Contract: after any step-level change, issues each join step whose arrivals are in and
--   which no active command can still reach, then completes the execution when nothing is
--   active and no arrival waits: `playbook.completed` with the result of `last_step`.
-- Cost: one read when no join waits (the usual transition): whether the execution runs,
--   whether an arrival waits, whether a command is active.
-- Locks: the execution row with its ancestors (lock_executions; callers hold them
--   already, in the lock order). This serialises the "is anything still active?"
--   question per execution: two branches finishing at once cannot both see the other as
--   running, because the second re-reads after the first commits.
create or replace function noetl.check_progress(
    p_execution_id bigint,
    p_last_step text
) returns void
language plpgsql
as $$
declare
    v_catalog_id bigint;
    v_join record;
    v_command_id bigint;
    v_arc_set jsonb;
    v_running boolean;
    v_waiting boolean;
    v_active boolean;
    v_reachable text[];
begin
    perform noetl.lock_executions(array[p_execution_id]);
    -- Whether it runs (execution_is_running's test), whether an arrival waits and whether
    -- a command is active, in one read. The active test is ordered like
    -- command_active_idx so even a generic plan reads that index: with one execution
    -- holding most of the queue, "first matching row of a scan" looks cheaper to the
    -- planner and walks the whole table for any other execution. (Not EXISTS: the planner
    -- drops ORDER BY and LIMIT inside EXISTS.)
    select
        e.status = 'RUNNING',
        exists (
            select 1 from noetl.join_arrival as a
            where a.execution_id = e.execution_id and a.consumed_by is null
        ),
        coalesce((
            select true from noetl.command as c
            where
                c.execution_id = e.execution_id
                and c.status in ('queued', 'claimed', 'waiting')
            order by c.step_name
            limit 1
        ), false)
    into v_running, v_waiting, v_active
    from noetl.execution as e
    where e.execution_id = p_execution_id;
    if not coalesce(v_running, false) then
        return;
    end if;

    if v_waiting then
        for v_join in
            select a.step_name, min(a.source_command_id) as first_source
            from noetl.join_arrival as a
            where a.execution_id = p_execution_id and a.consumed_by is null
            group by a.step_name
        loop
            -- The playbook's id is read only when a join waits.
            if v_catalog_id is null then
                select e.catalog_id into v_catalog_id
                from noetl.execution as e
                where e.execution_id = p_execution_id;
            end if;
            -- What the active commands can still reach, computed once, when a join waits:
            -- the plan stores arc targets only (reachable_steps walks them).
            if v_reachable is null then
                v_reachable := noetl.reachable_steps(v_catalog_id, array(
                    select distinct c.step_name
                    from noetl.command as c
                    where c.execution_id = p_execution_id
                        and c.status in ('queued', 'claimed', 'waiting')
                ));
            end if;
            continue when v_join.step_name = any(v_reachable);
            for v_arc_set in
                select a.arc_set from noetl.join_arrival as a
                where a.execution_id = p_execution_id
                    and a.step_name = v_join.step_name
                    and a.consumed_by is null
                    and a.arc_set is not null
                order by a.source_command_id
            loop
                update noetl.execution as e
                set ctx = e.ctx || v_arc_set
                where e.execution_id = p_execution_id;
            end loop;
            v_command_id := noetl.issue_step(
                p_execution_id, v_catalog_id, v_join.step_name,
                'join:' || v_join.first_source
            );
            update noetl.join_arrival as a
            set consumed_by = v_command_id
            where a.execution_id = p_execution_id
                and a.step_name = v_join.step_name
                and a.consumed_by is null;
            -- The join issued is active now: what it reaches counts for the next joins.
            v_reachable := null;
        end loop;
        -- Asked again, the joins just issued being active (ordered as above).
        select true into v_active
        from noetl.command as c
        where c.execution_id = p_execution_id
            and c.status in ('queued', 'claimed', 'waiting')
        order by c.step_name
        limit 1;
        v_active := coalesce(v_active, false) or exists (
            select 1 from noetl.join_arrival as a
            where a.execution_id = p_execution_id and a.consumed_by is null
        );
    end if;
    if v_active then
        return;
    end if;

    perform noetl.finish_execution(
        p_execution_id, 'COMPLETED',
        (select r.result from noetl.step_result as r
         where r.execution_id = p_execution_id and r.step_name = p_last_step),
        null, null
    );
end;
$$;

-- noetl.fail_execution(execution_id, step_name, error) -> void
-- Contract: a step failed and nothing handled it: cancels the execution's queued and
--   waiting commands, finishes it FAILED with the step and its error, and cancels its
--   running child executions (noetl.cancel_children). Commands already claimed finish
--   normally; their outcomes are recorded but route nowhere.
-- Locks: in the lock order: the execution row with its ancestors (held by the caller
--   already), then the command rows it cancels by command_id, then each child
--   (cancel_children).
create or replace function noetl.fail_execution(
    p_execution_id bigint,
    p_step_name text,
    p_error text
) returns void
language plpgsql
-- Planned for the execution at hand: a generic plan for "this execution's active
-- commands" may scan the whole queue when one execution holds most of it.
set plan_cache_mode = force_custom_plan
as $$
begin
    perform noetl.lock_executions(array[p_execution_id]);
    perform 1 from noetl.command as c
    where c.execution_id = p_execution_id and c.status in ('queued', 'waiting')
    order by c.command_id
    for update;
    update noetl.command as c
    set status = 'cancelled', finished_at = noetl.now()
    where c.execution_id = p_execution_id and c.status in ('queued', 'waiting');
    perform noetl.finish_execution(p_execution_id, 'FAILED', null, p_error, p_step_name);
    -- Children awaited by the commands just cancelled would run on for nothing.
    perform noetl.cancel_children(
        p_execution_id, 'parent execution ' || p_execution_id || ' failed'
    );
end;
$$;

-- noetl.execution_is_running(execution_id) -> boolean
-- Contract: whether the execution is RUNNING (false when it finished or does not exist): the
--   one test every transition makes before it issues, counts or routes anything. Read at
--   the calling statement's snapshot, so it sees what this transaction changed already.
-- Locks: none. The answer holds for the rest of the transaction only while the caller holds
--   the execution row (every writer takes it first, in the lock order: locking.sql), as
--   all its callers do.
create or replace function noetl.execution_is_running(p_execution_id bigint)
returns boolean
language plpgsql
stable
as $$
-- plpgsql rather than sql: a sub-select keeps a SQL function from being inlined, and a
-- SQL function that is not inlined is planned on every call.
-- The row by its key, its status tested after: with the status in the WHERE clause a
-- generic plan made on a fresh database walked execution_status_idx over every RUNNING
-- execution to find this one.
begin
    return coalesce(
        (select e.status = 'RUNNING' from noetl.execution as e
         where e.execution_id = p_execution_id),
        false
    );
end;
$$;

-- noetl.finish_execution(execution_id, status, result, error, failed_step) -> void
-- Contract: moves a RUNNING execution to its final status once and writes
--   playbook.completed / playbook.failed / playbook.cancelled. A finished execution is left
--   as it is. The event carries the result when it is at most 4 KB (else its size, the
--   result itself staying in execution.result). NOTIFY noetl_execution (payload: the id)
--   tells waiters. A child execution
--   then reports to its parent command (noetl.child_finished).
-- Locks: the execution row.
create or replace function noetl.finish_execution(
    p_execution_id bigint,
    p_status text,
    p_result jsonb,
    p_error text,
    p_failed_step text
) returns void
language plpgsql
as $$
declare
    v_exec noetl.execution;
begin
    update noetl.execution as e
    set status = p_status,
        result = p_result,
        error = p_error,
        failed_step = p_failed_step,
        finished_at = noetl.now(),
        updated_at = noetl.now()
    where e.execution_id = p_execution_id and e.status = 'RUNNING'
    returning e.* into v_exec;
    if not found then
        return;
    end if;

    -- The event keeps the result only while it is small: a loop's aggregate of thousands
    -- of results stays in execution.result (and step_result), not in the event log.
    perform noetl.record_event(
        p_execution_id,
        'playbook.' || case p_status
            when 'COMPLETED' then 'completed'
            when 'FAILED' then 'failed'
            else 'cancelled'
        end,
        p_failed_step, null, null,
        case when octet_length(p_result::text) <= 4096 then p_result end,
        p_error,
        case when octet_length(p_result::text) > 4096 then jsonb_build_object(
            'result_bytes', octet_length(p_result::text),
            'result_in', 'noetl.execution.result'
        ) end
    );
    perform pg_notify('noetl_execution', p_execution_id::text);
    if v_exec.parent_command_id is not null then
        perform noetl.child_finished(v_exec);
    end if;
end;
$$;

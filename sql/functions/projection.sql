-- projection.sql: an execution's state (noetl.execution_state), folded asynchronously from
-- the event log per shard.
--
-- Order and completeness. Events are folded in (tx_id, event_id) order, and only events
-- whose tx_id is below the xmin of the folding transaction's snapshot: every transaction
-- with an older id has finished, so no event can still appear before the checkpoint. An
-- event committed after a later-numbered one (a transaction holding a low event_id commits
-- late) is simply folded when its transaction leaves the snapshot: the checkpoint is the
-- (tx_id, event_id) of the last folded event, never a bare event_id.
--
-- Idempotence. state.position holds the (tx_id, event_id) of the last event folded into
-- that execution; fold_event ignores events at or before it. Re-folding events (after a
-- reshard, or a rebuild stored while the projector was behind) leaves the state unchanged,
-- and rebuild_execution_state, folding the same events in the same order, gives exactly
-- the live value.
--
-- State shape:
--   {status, started, finished, error, failed_step, events, position: [tx_id, event_id],
--    last_event: {id, type, step, at},
--    steps: {name: {status, started, finished, attempts, runs, command_id, error}},
--    loop: {step: {loop_id, total, done, failed, completed}},
--    fanout: {step: {total_shards, done, failed, retries, status}}}
-- Step status: queued -> running -> (retrying -> running)* -> done | failed.

-- fold_iterations (one call per run, bookkeeping included) became fold_position and
-- fold_iteration_counts.
drop function if exists noetl.fold_iterations(
    jsonb, integer, xid8, bigint, noetl.projection_event, jsonb
);

-- noetl.fold_iteration(state, event) -> state
-- Contract: counts one loop-iteration event (iter_index set) into state.loop/state.fanout
--   of its step, when it belongs to the step's current loop (same loop_id). Plain loops
--   count call.done and command.failed; fan-out loops count their shard outcomes
--   (loop.shard.done, loop.shard.failed; a failed shard that is retried counts as a retry).
--   Counters only add, so events of one loop fold to the same counts in any order.
-- Locks: none (pure).
create or replace function noetl.fold_iteration(
    p_state jsonb,
    p_event noetl.projection_event
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_name text := p_event.node_name;
    v_loop jsonb := p_state -> 'loop' -> p_event.node_name;
    v_fanout jsonb := p_state -> 'fanout' -> p_event.node_name;
    v_counter text;
begin
    if v_loop is null or (v_loop ->> 'loop_id')::bigint is distinct from p_event.loop_id then
        return p_state;
    end if;
    if v_fanout is null then
        v_counter := case p_event.event_type
            when 'call.done' then 'done'
            when 'command.failed' then 'failed'
        end;
    else
        v_counter := case
            when p_event.event_type = 'loop.shard.done' then 'done'
            when p_event.event_type <> 'loop.shard.failed' then null
            when coalesce((p_event.meta ->> 'retry')::boolean, false) then 'retries'
            else 'failed'
        end;
    end if;
    if v_counter is null then
        return p_state;
    end if;
    if v_counter <> 'retries' then
        p_state := jsonb_set(
            p_state, array['loop', v_name, v_counter],
            to_jsonb(coalesce((v_loop ->> v_counter)::integer, 0) + 1)
        );
    end if;
    if v_fanout is not null then
        p_state := jsonb_set(
            p_state, array['fanout', v_name, v_counter],
            to_jsonb(coalesce((v_fanout ->> v_counter)::integer, 0) + 1)
        );
    end if;
    return p_state;
end;
$$;

-- noetl.fold_position(state, events, last_tx, last_event_id, newest) -> state
-- Contract: the bookkeeping fold_event does for each event, for `events` events at once:
--   position becomes (last_tx, last_event_id), the last of them in fold order; `events` is
--   counted; last_event becomes `newest` (their highest event_id) when it is newer. Every
--   other part of the state is independent of these fields, so the projector folds an
--   execution's batch of events without them and applies them once.
-- Locks: none (pure).
create or replace function noetl.fold_position(
    p_state jsonb,
    p_events integer,
    p_last_tx xid8,
    p_last_event_id bigint,
    p_newest noetl.projection_event
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_state jsonb := coalesce(p_state, '{}');
begin
    v_state := v_state || jsonb_build_object(
        'position', jsonb_build_array(p_last_tx::text::numeric, p_last_event_id),
        'events', coalesce((v_state ->> 'events')::bigint, 0) + p_events
    );
    if p_newest.event_id > coalesce((v_state #>> '{last_event,id}')::bigint, 0) then
        v_state := v_state || jsonb_build_object('last_event', jsonb_build_object(
            'id', p_newest.event_id, 'type', p_newest.event_type, 'step', p_newest.node_name,
            'at', to_jsonb(p_newest.created_at)
        ));
    end if;
    return v_state;
end;
$$;

-- noetl.fold_iteration_counts(state, counts) -> state
-- Contract: counts a run of loop-iteration events (consecutive in fold order, no
--   step-level event between them) into state.loop/state.fanout exactly as fold_iteration
--   would one by one. `counts` is [{step, loop_id, done, failed, shard_done, shard_failed,
--   shard_retries}] (call.done, command.failed, loop.shard.done, loop.shard.failed without
--   and with meta.retry), one entry per step and loop. Counters only add and a run changes
--   no loop's identity, so the order inside the run does not matter: the projector counts
--   the events of a loop's iterations in one call per run instead of one plpgsql fold (and
--   state copy) per event.
-- Locks: none (pure).
create or replace function noetl.fold_iteration_counts(
    p_state jsonb,
    p_counts jsonb
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_state jsonb := coalesce(p_state, '{}');
    v_count jsonb;
    v_name text;
    v_loop jsonb;
    v_fanout jsonb;
    v_done integer;
    v_failed integer;
begin
    for v_count in select c.value from jsonb_array_elements(coalesce(p_counts, '[]')) as c loop
        v_name := v_count ->> 'step';
        v_loop := v_state -> 'loop' -> v_name;
        continue when v_name is null or v_loop is null
            or (v_loop ->> 'loop_id')::bigint is distinct from (v_count ->> 'loop_id')::bigint;
        v_fanout := v_state -> 'fanout' -> v_name;
        if v_fanout is null then
            v_done := (v_count ->> 'done')::integer;
            v_failed := (v_count ->> 'failed')::integer;
        else
            v_done := (v_count ->> 'shard_done')::integer;
            v_failed := (v_count ->> 'shard_failed')::integer;
        end if;
        -- A counter is written only when counted, as one-by-one folding leaves it.
        if v_done > 0 then
            v_state := jsonb_set(v_state, array['loop', v_name, 'done'],
                                 to_jsonb(coalesce((v_loop ->> 'done')::integer, 0) + v_done));
        end if;
        if v_failed > 0 then
            v_state := jsonb_set(v_state, array['loop', v_name, 'failed'], to_jsonb(
                coalesce((v_loop ->> 'failed')::integer, 0) + v_failed
            ));
        end if;
        if v_fanout is not null then
            if v_done > 0 then
                v_state := jsonb_set(v_state, array['fanout', v_name, 'done'], to_jsonb(
                    coalesce((v_fanout ->> 'done')::integer, 0) + v_done
                ));
            end if;
            if v_failed > 0 then
                v_state := jsonb_set(v_state, array['fanout', v_name, 'failed'], to_jsonb(
                    coalesce((v_fanout ->> 'failed')::integer, 0) + v_failed
                ));
            end if;
            if (v_count ->> 'shard_retries')::integer > 0 then
                v_state := jsonb_set(v_state, array['fanout', v_name, 'retries'], to_jsonb(
                    coalesce((v_fanout ->> 'retries')::integer, 0)
                    + (v_count ->> 'shard_retries')::integer
                ));
            end if;
        end if;
    end loop;
    return v_state;
end;
$$;

-- noetl.fold_step(state, event) -> state
-- Contract: applies one step-level event (node_name set, iter_index NULL) to
--   state.steps[node_name], and loop starts/ends to state.loop and state.fanout. A step's
--   current command is the latest non-route command issued for it; events of other
--   commands (its route commands, an earlier activation) leave the step as it is.
-- Locks: none (pure).
create or replace function noetl.fold_step(
    p_state jsonb,
    p_event noetl.projection_event
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_name text := p_event.node_name;
    v_step jsonb := coalesce(p_state -> 'steps' -> p_event.node_name, '{}');
    v_status text := v_step ->> 'status';
    v_attempts integer := greatest(
        coalesce((v_step ->> 'attempts')::integer, 0), coalesce(p_event.attempt, 0)
    );
    v_at jsonb := to_jsonb(p_event.created_at);
begin
    if p_event.event_type = 'command.issued' then
        if p_event.meta ->> 'kind' in ('route', 'cursor')
            or p_event.command_id <= coalesce((v_step ->> 'command_id')::bigint, 0) then
            return p_state;
        end if;
        -- A command created claimed (meta.worker_id) is issued and claimed in one event.
        v_step := v_step || jsonb_build_object(
            'status', case when p_event.meta ? 'worker_id' then 'running' else 'queued' end,
            'command_id', p_event.command_id,
            'attempts', case when p_event.meta ? 'worker_id' then p_event.attempt else 0 end,
            'runs', coalesce((v_step ->> 'runs')::integer, 0) + 1,
            'started', coalesce(v_step -> 'started', v_at), 'finished', null
        );
    elsif p_event.command_id is distinct from (v_step ->> 'command_id')::bigint then
        return p_state;
    elsif p_event.event_type = 'command.claimed' then
        v_step := v_step || jsonb_build_object('attempts', v_attempts);
        if v_status in ('queued', 'retrying') then
            v_step := v_step || jsonb_build_object('status', 'running');
        end if;
    elsif p_event.event_type = 'call.error' then
        v_step := v_step || jsonb_build_object(
            'attempts', v_attempts, 'error', left(p_event.error, 500)
        );
    elsif p_event.event_type = 'command.retried' then
        if v_status not in ('done', 'failed') then
            v_step := v_step || jsonb_build_object('status', 'retrying');
        end if;
    elsif p_event.event_type = 'command.reaped' then
        if v_status = 'running' then
            v_step := v_step || jsonb_build_object('status', 'queued');
        end if;
    elsif p_event.event_type in ('call.done', 'loop.done') then
        -- An earlier attempt's error (a retry, or a resumed execution) no longer describes
        -- a step that is done; the events keep it.
        v_step := (v_step - 'error') || jsonb_build_object(
            'status', 'done', 'finished', v_at, 'attempts', v_attempts
        );
    elsif p_event.event_type = 'command.failed' then
        v_step := v_step || jsonb_build_object(
            'status', 'failed', 'finished', v_at, 'attempts', v_attempts,
            'error', left(p_event.error, 500)
        );
    elsif p_event.event_type in ('loop.started', 'loop.fanout.started') then
        v_step := v_step || jsonb_build_object('status', 'running', 'attempts', v_attempts);
        p_state := jsonb_set(
            p_state || jsonb_build_object('loop', coalesce(p_state -> 'loop', '{}')),
            array['loop', v_name],
            jsonb_build_object(
                'loop_id', p_event.loop_id,
                'total', (p_event.meta ->> 'collection_size')::integer,
                'done', 0, 'failed', 0, 'completed', false
            )
        );
        if p_event.event_type = 'loop.fanout.started' then
            p_state := jsonb_set(
                p_state || jsonb_build_object('fanout', coalesce(p_state -> 'fanout', '{}')),
                array['fanout', v_name],
                jsonb_build_object(
                    'total_shards', (p_event.meta ->> 'total_shards')::integer,
                    'done', 0, 'failed', 0, 'retries', 0, 'status', 'running'
                )
            );
        end if;
    elsif p_event.event_type = 'loop.fanin.completed' then
        if p_state -> 'fanout' -> v_name is not null then
            p_state := jsonb_set(
                p_state, array['fanout', v_name, 'status'], to_jsonb(p_event.meta ->> 'status')
            );
        end if;
        return p_state;
    else
        return p_state;
    end if;

    if p_event.event_type = 'loop.done'
        and (p_state #>> array['loop', v_name, 'loop_id'])::bigint = p_event.loop_id then
        p_state := jsonb_set(p_state, array['loop', v_name, 'completed'], 'true');
    end if;
    return jsonb_set(
        p_state || jsonb_build_object('steps', coalesce(p_state -> 'steps', '{}')),
        array['steps', v_name], v_step
    );
end;
$$;

-- noetl.merge_steps(state, steps) -> state
-- Contract: state with `steps` ({name: step}, as fold_step leaves them) written into
--   state.steps over what is there; the state as it is when `steps` is empty.
-- Locks: none (pure).
create or replace function noetl.merge_steps(p_state jsonb, p_steps jsonb)
returns jsonb
language plpgsql
immutable
as $$
begin
    if p_steps is null or p_steps = '{}'::jsonb then
        return p_state;
    end if;
    return p_state || jsonb_build_object(
        'steps', coalesce(p_state -> 'steps', '{}'::jsonb) || p_steps
    );
end;
$$;

-- noetl.fold_content(state, event) -> state
-- Contract: what one event changes in an execution's state besides the bookkeeping of
--   fold_position: the status of a playbook.* event, a step's (fold_step) or a loop
--   iteration's (fold_iteration). It reads no bookkeeping field. For a step-level event
--   it reads only state.steps[step], state.loop and state.fanout, which is what lets the
--   projector fold it against a state holding only those.
-- Locks: none (pure).
create or replace function noetl.fold_content(
    p_state jsonb,
    p_event noetl.projection_event
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_type text := p_event.event_type;
    v_at jsonb := to_jsonb(p_event.created_at);
begin
    if v_type = 'playbook.started' then
        return p_state || jsonb_build_object(
            'status', coalesce(p_state ->> 'status', 'RUNNING'), 'started', v_at
        );
    elsif v_type in ('playbook.completed', 'playbook.failed', 'playbook.cancelled') then
        return p_state || jsonb_build_object(
            'status', upper(split_part(v_type, '.', 2)), 'finished', v_at,
            'error', left(p_event.error, 500), 'failed_step', p_event.node_name
        );
    elsif p_event.node_name is null then
        return p_state;
    elsif p_event.iter_index is not null then
        return noetl.fold_iteration(p_state, p_event);
    end if;
    return noetl.fold_step(p_state, p_event);
end;
$$;

-- noetl.is_folded_at(position, tx_id, event_id) -> boolean
-- Contract: is_folded against a state's `position` ([tx_id, event_id], NULL when nothing
--   was folded yet): whether the event is at or before it. The projector's batch reads
--   each execution's position once and tests every event against it.
-- Locks: none (pure).
create or replace function noetl.is_folded_at(
    p_position jsonb,
    p_tx_id xid8,
    p_event_id bigint
) returns boolean
language sql
immutable
as $$
    -- SQL, one expression: inlined into the projector's batch query, evaluated per event.
    select coalesce(
        ((p_position ->> 0)::numeric, (p_position ->> 1)::bigint)
        >= (p_tx_id::text::numeric, p_event_id),
        false
    );
$$;

-- noetl.is_folded(state, tx_id, event_id) -> boolean
-- Contract: whether the event (tx_id, event_id) is at or before state.position, i.e.
--   already folded into `state` (folding it again must change nothing). The one test of
--   idempotence (fold_event; the projector's batch tests its position, is_folded_at).
-- Locks: none (pure).
create or replace function noetl.is_folded(p_state jsonb, p_tx_id xid8, p_event_id bigint)
returns boolean
language sql
immutable
as $$
    select noetl.is_folded_at(p_state -> 'position', p_tx_id, p_event_id);
$$;

-- noetl.fold_event(state, event) -> state
-- Contract: the projection's one step: folds one event into an execution's state
--   (fold_position for the event, then fold_content). Events at or before
--   state.position are ignored, so folding is idempotent.
-- Locks: none (pure).
create or replace function noetl.fold_event(
    p_state jsonb,
    p_event noetl.projection_event
) returns jsonb
language plpgsql
immutable
as $$
declare
    v_state jsonb := coalesce(p_state, '{}');
begin
    if noetl.is_folded(v_state, p_event.tx_id, p_event.event_id) then
        return v_state;
    end if;
    return noetl.fold_content(
        noetl.fold_position(v_state, 1, p_event.tx_id, p_event.event_id, p_event), p_event
    );
end;
$$;

-- noetl.rebuild_execution_state(execution_id, store) -> state
-- Contract: recomputes an execution's state from its events with the live fold (same
--   events, same order: those below the snapshot's xmin, by (tx_id, event_id)). With
--   `store` the result replaces the execution's noetl.execution_state row (the projector
--   then skips what it folded). Returns '{}' for an execution without events.
-- Locks: with `store`, the execution's execution_state row (created when missing, then
--   FOR UPDATE: a fold of its shard in progress finishes first, the next one waits).
create or replace function noetl.rebuild_execution_state(
    p_execution_id bigint,
    p_store boolean default false
) returns jsonb
language plpgsql
as $$
declare
    v_xmin xid8;
    v_state jsonb := '{}';
    v_event noetl.projection_event;
begin
    if p_store then
        insert into noetl.execution_state (execution_id)
        select x.execution_id from noetl.execution as x where x.execution_id = p_execution_id
        on conflict (execution_id) do nothing;
        perform 1 from noetl.execution_state as st
        where st.execution_id = p_execution_id
        for update;
    end if;
    -- Taken after the lock: a fold that held it may have moved its shard's checkpoint past
    -- events that an older xmin would leave out of the stored state for good.
    v_xmin := pg_snapshot_xmin(pg_current_snapshot());
    for v_event in
        select e.event_id, e.tx_id, e.event_type, e.node_name, e.command_id, e.loop_id,
            e.iter_index, e.attempt, e.meta, left(e.error, 500), e.created_at
        from noetl.event as e
        where e.execution_id = p_execution_id and e.tx_id < v_xmin
        order by e.tx_id, e.event_id
    loop
        v_state := noetl.fold_event(v_state, v_event);
    end loop;
    if p_store then
        update noetl.execution_state as st set state = v_state
        where st.execution_id = p_execution_id;
    end if;
    return v_state;
end;
$$;

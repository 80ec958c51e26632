-- cursor_loop.sql: pull-model loops (`loop.cursor`). A cursor loop has no collection; it
-- has `max_in_flight` slots. Map of the API:
--
--   start_loop (mode 'cursor') -> start_cursor_loop: the loop row, its cursor_loop row
--       and one claim command (kind 'cursor') per slot.
--   a worker runs a claim command: the claim statement, in a transaction on the
--       playbook's database that it commits only after finish_cursor_claim_v1 committed
--       (noetl_pg/cursor.py) -> finish_cursor_claim_v1: the rows become loop items of that
--       slot, numbered in claim order, and the slot's first new item is issued as an
--       ordinary loop iteration; no row: the slot is drained.
--   each iteration of a cursor item finishes like any loop iteration (finish_and_claim,
--       fail_command, the reaper's poison) -> advance_cursor_loop: the slot runs its next
--       item, or, after the last item of its claim, claims again.
--   the claim that drains the last slot closes the loop (close_loop: loop.done, results in
--       index order, stats, on_error).
--
-- So each slot has at most one command in flight (its claim or one of its items) and the
-- loop's in-flight bound holds as for any loop. A claimed row is in the engine before the
-- claim commits on the playbook's database: a worker that dies after recording it leaves
-- the item to its slot (the reaper re-queues the command that runs it, same attempt); one
-- that dies before leaves the claim uncommitted, so the row was never taken. A row already
-- recorded that a claim returns again (the worker died between the two commits) is
-- skipped by its key. No reclaim SQL is needed in the playbook.

-- noetl.start_cursor_loop(command, attempt, loop_spec) -> route_command_id (always NULL)
-- Contract: called by start_loop for a claimed 'loop' command of a cursor step, holding its
--   locks. Creates the loop (mode 'cursor', total 0: items arrive with claims), its
--   cursor_loop row (loop_spec.cursor: the rendered {kind, auth, claim, options}), writes
--   `loop.started` (collection_size NULL, mode 'cursor'), parks the loop command in
--   'waiting' and issues one claim command per slot (loop_spec.max_in_flight, default 10).
-- Locks: the loop command row (held by the caller); the new rows.
create or replace function noetl.start_cursor_loop(
    p_cmd noetl.command,
    p_attempt integer,
    p_loop_spec jsonb
) returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_slots integer := greatest(coalesce((p_loop_spec ->> 'max_in_flight')::integer, 10), 1);
begin
    if jsonb_typeof(p_loop_spec -> 'cursor') is distinct from 'object' then
        raise exception 'step "%": a cursor loop needs loop.cursor', p_cmd.step_name
            using errcode = '22023';
    end if;
    insert into noetl.loop (
        execution_id, step_name, command_id, iterator, mode, max_in_flight, total, issued,
        on_error
    )
    values (
        p_cmd.execution_id, p_cmd.step_name, p_cmd.command_id,
        coalesce(p_loop_spec ->> 'iterator', 'item'), 'cursor', v_slots, 0, 0,
        coalesce(p_loop_spec ->> 'on_error', 'fail')
    )
    returning * into v_loop;
    insert into noetl.cursor_loop (loop_id, execution_id, cursor_spec, slots)
    values (v_loop.loop_id, p_cmd.execution_id, p_loop_spec -> 'cursor', v_slots);

    update noetl.command as c set status = 'waiting' where c.command_id = p_cmd.command_id;
    perform noetl.record_event(
        p_cmd.execution_id, 'loop.started', p_cmd.step_name, p_cmd.command_id, p_attempt,
        null, null,
        jsonb_build_object(
            'loop_id', v_loop.loop_id, 'collection_size', null,
            'max_in_flight', v_slots, 'mode', 'cursor'
        ),
        v_loop.loop_id
    );
    perform noetl.issue_cursor_claims(
        v_loop, array(select generate_series(0, v_slots - 1))
    );
    return null;
end;
$$;

-- noetl.issue_cursor_claims(loop, slots) -> void
-- Contract: issues one claim command (kind 'cursor', key cursor:<loop_id>:<n>, loop_id set,
--   iter_index NULL, input {slot, cursor}) for each slot in `slots`, with its
--   `command.issued` event (meta.kind 'cursor'), and wakes workers. Counts them in
--   cursor_loop.claims (which numbers the keys).
-- Locks: the cursor_loop row (the caller holds the loop row, so it never waits long).
create or replace function noetl.issue_cursor_claims(
    p_loop noetl.loop,
    p_slots integer[]
) returns void
language plpgsql
as $$
declare
    v_cursor noetl.cursor_loop;
    v_logged integer;
begin
    if coalesce(cardinality(p_slots), 0) = 0 then
        return;
    end if;
    update noetl.cursor_loop as k
    set claims = k.claims + cardinality(p_slots)
    where k.loop_id = p_loop.loop_id
    returning * into strict v_cursor;

    with issued as (
        insert into noetl.command (
            execution_id, command_key, kind, step_name, max_attempts, loop_id, input
        )
        select
            p_loop.execution_id,
            'cursor:' || p_loop.loop_id || ':' || (v_cursor.claims - cardinality(p_slots) + s.n),
            'cursor', p_loop.step_name, 1, p_loop.loop_id,
            jsonb_build_object('slot', s.slot, 'cursor', v_cursor.cursor_spec)
        from unnest(p_slots) with ordinality as s (slot, n)
        returning command_id, command_key
    )

    select noetl.record_events(array_agg(
        row(
            p_loop.execution_id, 'command.issued', p_loop.step_name, issued.command_id, 1,
            null, null,
            jsonb_build_object('kind', 'cursor', 'command_key', issued.command_key),
            p_loop.loop_id, null, null
        )::noetl.event_record
        order by issued.command_id
    ))
    into v_logged
    from issued;
    perform noetl.notify_queue();
end;
$$;

-- noetl.finish_cursor_claim_v1(worker_id, command_id, attempt, claim_gen, rows, error,
--   kinds) -> (outcome, route_command_id, claimed)
-- Worker protocol v1 (the unversioned finish_cursor_claim calls it, for older workers).
-- Contract: what a claim command of a cursor loop returned, applied at most once: fenced
--   like every outcome (claimed at `attempt` and claim generation `claim_gen`, else
--   outcome 'stale', refuse_outcome, nothing changes). Then, in one transaction:
--   * `error` not NULL (the claim failed): see cursor_claim_failed; outcome 'failed'.
--   * `rows` empty: the slot is drained (`cursor.drained`); outcome 'drained'.
--   * otherwise each row not yet held by the loop (its key: md5 of the row, or of the
--     columns named by cursor.options.key) becomes a loop item of the claim's slot, at
--     the next indexes in claim order; `cursor.claimed` (meta: slot, rows, new) is
--     written, and the slot's first new item is issued as a loop iteration (created
--     claimed by `worker_id` when it serves the step's kind, which is then returned in
--     `claimed`); when every row was held already the slot claims again. Outcome 'ok'.
--   The claim command is done (or failed) either way. A loop that is no longer running,
--   or an execution no longer RUNNING, gives outcome 'closed' and records nothing: the
--   caller rolls its claim back. The claim that drains the last slot closes the loop
--   (close_loop; its route command for `worker_id` is returned).
-- Locks: in the lock order, the execution (with ancestors), the loop, the claim command
--   (lock_claimed_command); then the cursor_loop row and the new items.
-- Failure modes: no_data_found for an unknown command id; 22023 when it is not a claim
--   command or `rows` is not a JSON array.
create or replace function noetl.finish_cursor_claim_v1(
    p_worker_id text,
    p_command_id bigint,
    p_attempt integer,
    p_claim_gen integer,
    p_rows jsonb,
    p_error text default null,
    p_kinds text[] default null,
    out outcome text,
    out route_command_id bigint,
    out claimed bigint[]
)
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_loop noetl.loop;
    v_key_columns jsonb;
    v_slot integer;
    v_first integer;
    v_new integer;
    -- A worker that does not serve 'route' commands is not handed one pre-claimed.
    v_router text := case
        when p_kinds is null or 'route' = any(p_kinds) then p_worker_id
    end;
begin
    claimed := '{}';
    v_cmd := noetl.lock_claimed_command(
        p_command_id, p_attempt, 'cursor', p_claim_gen, 'cursor', p_worker_id
    );
    if v_cmd.command_id is null then
        outcome := 'stale';
        return;
    end if;
    select * into strict v_loop from noetl.loop as l where l.loop_id = v_cmd.loop_id;
    if v_loop.status <> 'running' or not noetl.execution_is_running(v_cmd.execution_id) then
        update noetl.command as c set status = 'cancelled', finished_at = noetl.now()
        where c.command_id = p_command_id;
        outcome := 'closed';
        return;
    end if;
    v_slot := (v_cmd.input ->> 'slot')::integer;

    if p_error is not null then
        perform noetl.fail_command_finally(v_cmd, p_error, null);
        route_command_id := noetl.cursor_claim_failed(v_cmd, p_error, v_router);
        outcome := 'failed';
        return;
    end if;
    if jsonb_typeof(p_rows) is distinct from 'array' then
        raise exception 'step "%": a cursor claim must return rows, got %', v_cmd.step_name,
            coalesce(jsonb_typeof(p_rows), 'null') using errcode = '22023';
    end if;

    update noetl.command as c set status = 'done', finished_at = noetl.now()
    where c.command_id = p_command_id;

    if jsonb_array_length(p_rows) = 0 then
        perform noetl.record_event(
            v_cmd.execution_id, 'cursor.drained', v_cmd.step_name, p_command_id, p_attempt,
            null, null, jsonb_build_object('slot', v_slot), v_loop.loop_id
        );
        outcome := 'drained';
        route_command_id := noetl.drain_cursor_slot(v_loop, v_router);
        return;
    end if;

    select k.cursor_spec -> 'options' -> 'key' into v_key_columns
    from noetl.cursor_loop as k where k.loop_id = v_loop.loop_id;
    v_first := v_loop.total;
    with claimed_rows as (
        select
            r.value,
            r.ordinality,
            md5(case
                when jsonb_typeof(v_key_columns) = 'array' then (
                    select jsonb_agg(r.value -> k.name order by k.position)
                    from jsonb_array_elements_text(v_key_columns)
                        with ordinality as k (name, position)
                )
                else r.value
            end::text) as row_key
        from jsonb_array_elements(p_rows) with ordinality as r (value, ordinality)
    ),

    fresh as (
        select distinct on (c.row_key) c.value, c.ordinality, c.row_key
        from claimed_rows as c
        where not exists (
            select 1 from noetl.loop_item as li
            where li.loop_id = v_loop.loop_id and li.row_key = c.row_key
        )
        order by c.row_key, c.ordinality
    ),

    stored as (
        insert into noetl.loop_item (
            loop_id, iter_index, execution_id, item_value, cursor_slot, row_key
        )
        select
            v_loop.loop_id,
            v_first + (row_number() over (order by f.ordinality))::integer - 1,
            v_loop.execution_id, f.value, v_slot, f.row_key
        from fresh as f
        returning 1
    )

    select count(*)::integer into v_new from stored;

    perform noetl.record_event(
        v_cmd.execution_id, 'cursor.claimed', v_cmd.step_name, p_command_id, p_attempt,
        null, null,
        jsonb_build_object(
            'slot', v_slot, 'rows', jsonb_array_length(p_rows), 'new', v_new,
            'first_index', case when v_new > 0 then v_first end
        ),
        v_loop.loop_id
    );
    outcome := 'ok';
    if v_new = 0 then
        perform noetl.issue_cursor_claims(v_loop, array[v_slot]);
        return;
    end if;
    v_loop.total := v_loop.total + v_new;
    claimed := noetl.issue_loop_items(v_loop, v_first, 1, p_worker_id, 1, p_kinds);
    update noetl.loop as l
    set total = v_loop.total, issued = l.issued + 1
    where l.loop_id = v_loop.loop_id;
end;
$$;

-- noetl.cursor_claim_failed(command, error, worker_id) -> route_command_id
-- Contract: a claim that failed (its statement raised, its credential is missing, or the
--   reaper gave up on it as poison), for a caller holding the command's locks that already
--   failed the command (fail_command_finally): the failure is counted as a failed item of the loop
--   (a new index, no row, result {status: error, error}, with its `call.error` event) so
--   close_loop reports it under loop.spec.on_error like any failed iteration, and the slot
--   is drained: it claims no more. Draining the last slot closes the loop.
-- Locks: the loop row and the command row (held by the caller), the new item.
create or replace function noetl.cursor_claim_failed(
    p_cmd noetl.command,
    p_error text,
    p_worker_id text
) returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
begin
    select * into strict v_loop from noetl.loop as l where l.loop_id = p_cmd.loop_id;
    if v_loop.status <> 'running' then
        return null;
    end if;
    insert into noetl.loop_item (
        loop_id, iter_index, execution_id, status, result, cursor_slot
    )
    values (
        v_loop.loop_id, v_loop.total, v_loop.execution_id, 'failed',
        jsonb_build_object('status', 'error', 'error', p_error),
        (p_cmd.input ->> 'slot')::integer
    );
    perform noetl.record_event(
        p_cmd.execution_id, 'call.error', p_cmd.step_name, p_cmd.command_id, p_cmd.attempt,
        null, p_error, jsonb_build_object('cursor_claim', true), v_loop.loop_id,
        v_loop.total
    );
    update noetl.loop as l
    set total = l.total + 1, issued = l.issued + 1, failed = l.failed + 1
    where l.loop_id = v_loop.loop_id
    returning * into v_loop;
    return noetl.drain_cursor_slot(v_loop, p_worker_id);
end;
$$;

-- noetl.drain_cursor_slot(loop, worker_id) -> route_command_id
-- Contract: counts one more drained slot of a running loop (a loop no longer running is
--   left as it is); the one that drains the last slot closes the loop (close_loop) and
--   returns its route command. A slot drains only after its items
--   finished, so every item is counted by then.
-- Locks: the cursor_loop row; through close_loop, the loop row the caller holds.
create or replace function noetl.drain_cursor_slot(p_loop noetl.loop, p_worker_id text)
returns bigint
language plpgsql
as $$
declare
    v_cursor noetl.cursor_loop;
begin
    if p_loop.status <> 'running' then
        return null;
    end if;
    update noetl.cursor_loop as k
    set drained = k.drained + 1
    where k.loop_id = p_loop.loop_id
    returning * into strict v_cursor;
    if v_cursor.drained < v_cursor.slots then
        return null;
    end if;
    return noetl.close_loop(p_loop.loop_id, p_worker_id);
end;
$$;

-- noetl.advance_cursor_loop(loop_id, done, failed, finished, claimer, claim_n, kinds)
--   -> claimed
-- Contract: advance_loop for a cursor loop: counts `done` and `failed` finished
--   iterations (their items are already stored); for each finished item (`finished`: their
--   iter_index) its slot goes on: with the next item of the same claim (the item right
--   after it, when that slot claimed it: a claim's items are numbered together) issued as
--   an iteration (up to `claim_n` created claimed by `claimer`, see issue_loop_items), or
--   with a new claim command after the claim's last item. A loop no longer running is left
--   as it is; a loop whose execution is no longer RUNNING counts and becomes 'cancelled'.
--   It never closes the loop: the last drained slot does (finish_cursor_claim_v1).
-- Locks: the loop row (FOR UPDATE), then the cursor_loop row and the new command rows.
create or replace function noetl.advance_cursor_loop(
    p_loop_id bigint,
    p_done integer,
    p_failed integer,
    p_finished integer[],
    p_claimer text default null,
    p_claim_n integer default 0,
    p_kinds text[] default null
) returns bigint[]
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_claimed bigint[] := '{}';
    v_next record;
    v_issued integer := 0;
    v_reclaim integer[] := '{}';
begin
    select * into v_loop from noetl.loop as l where l.loop_id = p_loop_id for update;
    if not found or v_loop.status <> 'running' then
        return v_claimed;
    end if;
    if not noetl.execution_is_running(v_loop.execution_id) then
        update noetl.loop as l
        set done = l.done + p_done, failed = l.failed + p_failed, status = 'cancelled',
            finished_at = noetl.now()
        where l.loop_id = p_loop_id;
        return v_claimed;
    end if;
    for v_next in
        select distinct on (f.cursor_slot) f.cursor_slot, n.iter_index as next_index
        from noetl.loop_item as f
        left join noetl.loop_item as n
            on
                f.loop_id = n.loop_id
                and n.iter_index = f.iter_index + 1
                and f.cursor_slot = n.cursor_slot
        where f.loop_id = p_loop_id and f.iter_index = any(p_finished)
        order by f.cursor_slot, f.iter_index desc
    loop
        if v_next.next_index is null then
            v_reclaim := v_reclaim || v_next.cursor_slot;
        else
            v_claimed := v_claimed || noetl.issue_loop_items(
                v_loop, v_next.next_index, 1, p_claimer,
                greatest(coalesce(p_claim_n, 0) - cardinality(v_claimed), 0), p_kinds
            );
            v_issued := v_issued + 1;
        end if;
    end loop;
    perform noetl.issue_cursor_claims(v_loop, v_reclaim);
    update noetl.loop as l
    set done = l.done + p_done, failed = l.failed + p_failed, issued = l.issued + v_issued
    where l.loop_id = p_loop_id;
    return v_claimed;
end;
$$;

comment on function noetl.start_cursor_loop(noetl.command, integer, jsonb) is
'Starts a cursor loop (loop.cursor): loop and cursor_loop rows, one claim command per slot. '
'Called by start_loop, which holds the loop command''s locks.';
comment on function noetl.issue_cursor_claims(noetl.loop, integer[]) is
'Issues one claim command (kind cursor) per given slot. Caller holds the loop row.';
comment on function noetl.finish_cursor_claim_v1(
    text, bigint, integer, integer, jsonb, text, text[]
) is
'Applies a cursor claim (fenced by attempt and claim generation): rows become items of the '
'slot and its first new item is issued; no row drains the slot; the last drain closes '
'the loop. Locks execution, loop, command in the lock order.';
comment on function noetl.cursor_claim_failed(noetl.command, text, text) is
'A failed claim: the command fails, a failed item is counted, the slot drains.';
comment on function noetl.drain_cursor_slot(noetl.loop, text) is
'Counts a drained slot; the last one closes the loop (close_loop).';
comment on function noetl.advance_cursor_loop(
    bigint, integer, integer, integer[], text, integer, text[]
) is
'advance_loop for cursor loops: counts finished items and moves each slot to its next '
'item or a new claim. Locks the loop row first.';

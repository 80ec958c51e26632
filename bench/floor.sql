-- floor.sql: a bare-SQL model of the engine's hot path, the floor every bench figure is a
-- ratio to (bench/user_paths.py). It keeps the design's unavoidable work and nothing else:
-- a claim writes its event; a completion writes its event; a loop batch updates the loop
-- counter once and issues the next items in the same transaction, already claimed by the
-- completing worker; a chain step's completion issues and claims the next step in the same
-- transaction (the fused step). No templates, no tools, no plans, no projections.

create schema if not exists floor;

create table if not exists floor.command (
    command_id bigserial primary key,
    run_id integer not null,
    pos integer not null,
    status text not null,
    claimed_by text,
    result jsonb
);
create index if not exists command_queued_idx on floor.command (command_id)
where status = 'queued';

create table if not exists floor.event (
    event_id bigserial primary key,
    run_id integer not null,
    command_id bigint,
    event_type text not null,
    result jsonb,
    created_at timestamptz not null default clock_timestamp()
);

create table if not exists floor.loop (
    run_id integer primary key,
    total integer not null,
    width integer not null,
    issued integer not null,
    done integer not null default 0
);

-- floor.start_loop(run_id, total, width): the loop row and its first `width` items queued.
create or replace function floor.start_loop(p_run integer, p_total integer, p_width integer)
returns void
language sql
as $$
    insert into floor.loop (run_id, total, width, issued)
    values (p_run, p_total, p_width, least(p_total, p_width));
    with issued as (
        insert into floor.command (run_id, pos, status)
        select p_run, g, 'queued' from generate_series(0, least(p_total, p_width) - 1) as g
        returning command_id
    )
    insert into floor.event (run_id, command_id, event_type)
    select p_run, issued.command_id, 'issued' from issued;
    select pg_notify('floor', '');
$$;

-- floor.claim(worker, n) -> (command_id, run_id, pos): up to n queued commands, each
-- with its `claimed` event.
create or replace function floor.claim(p_worker text, p_n integer)
returns table (command_id bigint, run_id integer, pos integer)
language sql
as $$
    with picked as (
        select c.command_id from floor.command as c
        where c.status = 'queued'
        order by c.command_id
        limit p_n
        for update skip locked
    ),

    claimed as (
        update floor.command as c set status = 'claimed', claimed_by = p_worker
        from picked where c.command_id = picked.command_id
        returning c.command_id, c.run_id, c.pos
    ),

    logged as (
        insert into floor.event (run_id, command_id, event_type)
        select claimed.run_id, claimed.command_id, 'claimed' from claimed
    )

    select claimed.command_id, claimed.run_id, claimed.pos from claimed;
$$;

-- floor.finish_loop_batch(worker, run_id, results) -> the next items, claimed by `worker`.
-- `results` is [{command_id, result}]: each command done with its event, the loop counter
-- updated once, and as many new items issued (claimed, with their events) as finished.
create or replace function floor.finish_loop_batch(
    p_worker text, p_run integer, p_results jsonb
) returns table (command_id bigint, run_id integer, pos integer)
language plpgsql
as $$
declare
    v_finished integer;
    v_from integer;
    v_to integer;
begin
    -- Each command looked up by its key: written as a join with the outcomes, the plan
    -- hashed them against the whole table, which grows with every round of the bench.
    with outcome as (
        select (o ->> 'command_id')::bigint as command_id, o -> 'result' as result
        from jsonb_array_elements(p_results) as o
    ),

    done as (
        update floor.command as c
        set status = 'done', result = (
            select outcome.result from outcome where outcome.command_id = c.command_id
        )
        where c.command_id = any(array(select outcome.command_id from outcome))
        returning c.command_id, c.result
    )

    insert into floor.event (run_id, command_id, event_type, result)
    select p_run, done.command_id, 'done', done.result from done;
    get diagnostics v_finished = row_count;

    select l.issued into v_from from floor.loop as l where l.run_id = p_run for update;
    update floor.loop as l
    set done = l.done + v_finished, issued = least(l.total, v_from + v_finished)
    where l.run_id = p_run
    returning l.issued into v_to;

    return query
    with issued as (
        insert into floor.command (run_id, pos, status, claimed_by)
        select p_run, g, 'claimed', p_worker from generate_series(v_from, v_to - 1) as g
        returning floor.command.command_id, floor.command.run_id, floor.command.pos
    ),

    logged as (
        insert into floor.event (run_id, command_id, event_type)
        select issued.run_id, issued.command_id, 'issued' from issued
    )

    select issued.command_id, issued.run_id, issued.pos from issued;
end;
$$;

-- floor.finish_step(worker, command_id, result, steps) -> the next step's command id
-- (NULL after the last): the fused transition of a linear chain.
create or replace function floor.finish_step(
    p_worker text, p_command_id bigint, p_result jsonb, p_steps integer
) returns bigint
language plpgsql
as $$
declare
    v_run integer;
    v_position integer;
    v_next bigint;
begin
    update floor.command as c set status = 'done', result = p_result
    where c.command_id = p_command_id
    returning c.run_id, c.pos into v_run, v_position;
    insert into floor.event (run_id, command_id, event_type, result)
    values (v_run, p_command_id, 'done', p_result);
    if v_position + 1 >= p_steps then
        return null;
    end if;
    insert into floor.command (run_id, pos, status, claimed_by)
    values (v_run, v_position + 1, 'claimed', p_worker)
    returning command_id into v_next;
    insert into floor.event (run_id, command_id, event_type)
    values (v_run, v_next, 'issued');
    return v_next;
end;
$$;

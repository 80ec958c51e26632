-- context.sql: what a claim carries for its templates (the execution's context and the
-- results its step reads).

-- noetl.command_context(execution_id) -> jsonb
-- Contract: every result a template of this execution may read:
--   {execution_id, path, workload, ctx, results: {step_name: result}}. Used where what
--   is read is not known; claims use the two-argument form.
-- Locks: none (a plain read at the statement's snapshot).
create or replace function noetl.command_context(p_execution_id bigint)
returns jsonb
language plpgsql
stable
as $$
begin
    return noetl.command_context(p_execution_id, null);
end;
$$;

-- noetl.command_context(execution_id, reads) -> jsonb
-- Contract: the context shaped as above, whose `results` hold only what `reads` names:
--   {step_name: true} sends that step's result whole, {step_name: [key, ...]} only those
--   top-level keys of an object result (a result store ref, or a result that is not an
--   object, is sent whole: refs are resolved by the worker when a template reads them).
--   `reads` NULL sends every result. A step without a result yet is absent. So the bytes
--   a claim carries do not grow with results its step does not read.
-- Cost: an object `reads` is one step_result lookup by key per step it names, whatever
--   the number of results (a chain's step reads the one before it); otherwise one scan of
--   the execution's results.
-- Plans: one per session, index scans only (plan_cache_mode, enable_seqscan): a plan made
--   while step_result was a page or two, kept by the plan cache, would otherwise go on
--   filtering every result of the execution for each key it looks up.
-- Locks: none (a plain read at the statement's snapshot).
create or replace function noetl.command_context(p_execution_id bigint, p_reads jsonb)
returns jsonb
language plpgsql
stable
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
-- plpgsql rather than sql: a non-inlinable SQL function is planned on every call, and this
-- one runs on every claim. Two statements, one per shape of `reads`, rather than one
-- whose branches are gated by a test of the parameter: a generic plan of that one read
-- every result of the execution and filtered them by step name, for each step named.
-- Keys are picked by a call (result_keys), not a sub-select every execution sets up.
declare
    v_context jsonb;
begin
    if jsonb_typeof(p_reads) = 'object' then
        select jsonb_build_object(
            'execution_id', e.execution_id,
            'path', e.path,
            'workload', e.workload,
            'ctx', e.ctx,
            'results', coalesce(
                (select jsonb_object_agg(
                    r.step_name,
                    case
                        when jsonb_typeof(p_reads -> r.step_name) <> 'array'
                            or jsonb_typeof(r.result) <> 'object'
                            or r.result ? 'result_ref'
                            then r.result
                        else noetl.result_keys(r.result, p_reads -> r.step_name)
                    end
                )
                 from jsonb_object_keys(p_reads) as n (step_name)
                 -- `offset 0`: a lookup by (execution_id, step_name) per name, kept apart
                 -- from the key list (not flattened into a join).
                 cross join lateral (
                     select b.step_name, b.result from noetl.step_result as b
                     where b.execution_id = e.execution_id and b.step_name = n.step_name
                     offset 0
                 ) as r),
                '{}'::jsonb
            )
        ) into v_context
        from noetl.execution as e
        where e.execution_id = p_execution_id;
        return v_context;
    end if;
    select jsonb_build_object(
        'execution_id', e.execution_id,
        'path', e.path,
        'workload', e.workload,
        'ctx', e.ctx,
        'results', coalesce(
            (select jsonb_object_agg(
                r.step_name,
                case
                    when p_reads is null
                        or jsonb_typeof(p_reads -> r.step_name) <> 'array'
                        or jsonb_typeof(r.result) <> 'object'
                        or r.result ? 'result_ref'
                        then r.result
                    else noetl.result_keys(r.result, p_reads -> r.step_name)
                end
            )
             from noetl.step_result as r
             where
                 r.execution_id = e.execution_id
                 and (p_reads is null or p_reads ? r.step_name)),
            '{}'::jsonb
        )
    ) into v_context
    from noetl.execution as e
    where e.execution_id = p_execution_id;
    return v_context;
end;
$$;

-- noetl.result_keys(result, keys) -> jsonb
-- Contract: the object of the top-level `keys` (a JSON array of strings) that `result` (an
--   object) has, each with its value; '{}' when it has none of them. What command_context
--   sends of a result its step reads by key.
-- Locks: none.
create or replace function noetl.result_keys(p_result jsonb, p_keys jsonb)
returns jsonb
language plpgsql
immutable
as $$
begin
    return coalesce(
        (select jsonb_object_agg(k.key, p_result -> k.key)
         from jsonb_array_elements_text(p_keys) as k (key)
         where p_result ? k.key),
        '{}'::jsonb
    );
end;
$$;

-- noetl.command_reads(kind, step_name, reads, loop_reads) -> jsonb
-- Contract: what a command of `kind` for a step with these plan columns reads: a 'loop'
--   command (renders the collection) its loop_reads; a 'route' command its step's reads
--   plus its own step's result whole (arcs see `result`); any other (a step, a loop
--   iteration) its reads. NULL (unknown) stays NULL: everything is sent.
-- Locks: none.
create or replace function noetl.command_reads(
    p_kind text,
    p_step_name text,
    p_reads jsonb,
    p_loop_reads jsonb
) returns jsonb
language plpgsql
immutable
as $$
-- plpgsql: describe_commands calls this per row; a SQL function that is not inlined there
-- would be planned on every call (measured 2.4 ms a claim on a loaded 2-core machine).
begin
    return case p_kind
        when 'loop' then p_loop_reads
        when 'route' then p_reads || jsonb_build_object(p_step_name, true)
        else p_reads
    end;
end;
$$;

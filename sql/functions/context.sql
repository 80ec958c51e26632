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
-- Locks: none (a plain read at the statement's snapshot).
create or replace function noetl.command_context(p_execution_id bigint, p_reads jsonb)
returns jsonb
language plpgsql
stable
as $$
-- plpgsql rather than sql: a non-inlinable SQL function is planned on every call, and this
-- one runs on every claim.
declare
    v_context jsonb;
begin
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
                    else coalesce(
                        (select jsonb_object_agg(k.key, r.result -> k.key)
                         from jsonb_array_elements_text(p_reads -> r.step_name) as k (key)
                         where r.result ? k.key),
                        '{}'::jsonb
                    )
                end
            )
             from (
                 -- The steps an object `reads` names are looked up by key, not filtered
                 -- from all results (a chain's step read every result before it). The
                 -- first branch's test names no row: it gates the scan once.
                 select a.step_name, a.result from noetl.step_result as a
                 where
                     a.execution_id = e.execution_id
                     and (p_reads is null or jsonb_typeof(p_reads) <> 'object')
                     and (p_reads is null or p_reads ? a.step_name)
                 union all
                 select b.step_name, b.result
                 from jsonb_object_keys(
                     case when jsonb_typeof(p_reads) = 'object' then p_reads end
                 ) as k (step_name)
                 inner join noetl.step_result as b
                     on b.execution_id = e.execution_id and k.step_name = b.step_name
             ) as r),
            '{}'::jsonb
        )
    ) into v_context
    from noetl.execution as e
    where e.execution_id = p_execution_id;
    return v_context;
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

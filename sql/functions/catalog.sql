-- catalog.sql: registering playbooks.

-- noetl.register_playbook(path, content, spec) -> (catalog_id, version)
-- Contract: stores a new version of the playbook at `path` (1 for a new path, else the
--   latest + 1) and extracts each step's routing plan (spec.workflow[i].plan, computed by the
--   Python DSL parser) into noetl.catalog_step, including what each step reads of earlier
--   results (plan.reads, plan.loop_reads; see noetl.command_context) and its arc targets
--   (plan.successors; what it can reach is computed from them, noetl.reachable_steps).
--   Returns the new row's id and version.
-- Locks: a transaction-level advisory lock on the path, so two registrations of one path
--   get consecutive versions instead of a unique-key error.
-- Failure modes: raises (naming the path) when spec has no workflow, a step has no name or
--   plan, or a step name repeats; nothing is stored then.
create or replace function noetl.register_playbook(
    p_path text,
    p_content text,
    p_spec jsonb
) returns table (catalog_id bigint, version integer)
language plpgsql
as $$
declare
    v_catalog_id bigint;
    v_version integer;
    v_step jsonb;
    v_plan jsonb;
begin
    if p_path is null or btrim(p_path) = '' then
        raise exception 'playbook path must not be empty' using errcode = '22023';
    end if;
    if jsonb_typeof(p_spec -> 'workflow') is distinct from 'array'
        or jsonb_array_length(p_spec -> 'workflow') = 0 then
        raise exception 'playbook %: spec has no workflow steps', p_path
            using errcode = '22023';
    end if;

    perform pg_advisory_xact_lock(hashtextextended('noetl.catalog:' || p_path, 0));

    select coalesce(max(c.version), 0) + 1 into v_version
    from noetl.catalog as c
    where c.path = p_path;

    insert into noetl.catalog (path, version, content, spec)
    values (p_path, v_version, coalesce(p_content, ''), p_spec)
    returning noetl.catalog.catalog_id into v_catalog_id;

    for v_step in select value from jsonb_array_elements(p_spec -> 'workflow') loop
        v_plan := v_step -> 'plan';
        if coalesce(v_step ->> 'step', '') = '' or v_plan is null then
            raise exception 'playbook %: every workflow entry needs a step name and a plan',
                p_path using errcode = '22023';
        end if;
        begin
            insert into noetl.catalog_step (
                catalog_id, step_name, tool_kind, route_mode, direct_targets, is_join,
                has_loop, successors, max_attempts, reads, loop_reads
            )
            values (
                v_catalog_id,
                v_step ->> 'step',
                coalesce(v_plan ->> 'kind', 'noop'),
                coalesce(v_plan ->> 'route_mode', 'none'),
                array(select jsonb_array_elements_text(
                    coalesce(v_plan -> 'direct_targets', '[]'))),
                coalesce((v_plan ->> 'is_join')::boolean, false),
                coalesce((v_plan ->> 'has_loop')::boolean, false),
                array(select jsonb_array_elements_text(coalesce(v_plan -> 'successors', '[]'))),
                coalesce((v_plan ->> 'max_attempts')::integer, 1),
                -- JSON null (analysis inconclusive) is stored as SQL NULL: send everything.
                nullif(v_plan -> 'reads', 'null'::jsonb),
                nullif(v_plan -> 'loop_reads', 'null'::jsonb)
            );
        exception when unique_violation then
            raise exception 'playbook %: duplicate step name "%"', p_path, v_step ->> 'step'
                using errcode = '22023';
        end;
    end loop;

    return query select v_catalog_id, v_version;
end;
$$;

-- noetl.reachable_steps(catalog_id, from_steps) -> text[]
-- Contract: the steps of playbook version `catalog_id` that some step of `from_steps`
--   reaches through one or more arcs (catalog_step.successors), sorted; a step is in it
--   only when a cycle leads back to it. What the join rule (check_progress) and rerun ask;
--   the plan stores arc targets only, so its size stays linear in the playbook's.
-- Cost: one primary-key lookup per reachable step (a recursive query; UNION stops at
--   cycles).
-- Locks: none. Fails: never (an empty array for no steps or unknown ones).
create or replace function noetl.reachable_steps(
    p_catalog_id bigint,
    p_from_steps text[]
) returns text[]
language sql
stable
as $$
    with recursive reached (step_name) as (
        select unnest(s.successors)
        from noetl.catalog_step as s
        where s.catalog_id = p_catalog_id and s.step_name = any(p_from_steps)
        union
        select unnest(s.successors)
        from reached as r
        inner join noetl.catalog_step as s
            on s.catalog_id = p_catalog_id and r.step_name = s.step_name
    )

    select coalesce(array_agg(r.step_name order by r.step_name), '{}') from reached as r
$$;

-- 0013_step_reads: what each step's templates read of earlier step results, computed at
-- registration (noetl_pg.dsl, plan `reads`/`loop_reads`), so a claim carries only that
-- (noetl.command_context). Each is {step_name: [top-level keys] | true (whole result)};
-- NULL means "not known": the claim carries every result, as before this migration, which
-- is what steps registered earlier get.
alter table noetl.catalog_step
add column if not exists reads jsonb,
add column if not exists loop_reads jsonb;

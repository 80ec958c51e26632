-- 0026_catalog_step_join: whether a playbook has join steps, in one index probe. Idempotent.

-- route_after skips check_progress after a transition that issued a plain step in a
-- playbook without joins (a command is then active and no arrival can wait): most
-- playbooks have no join, and the probe must not read every step of a long one.
create index if not exists catalog_step_join_idx on noetl.catalog_step (catalog_id)
where is_join;

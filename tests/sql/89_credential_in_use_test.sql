-- Direct tests of noetl.credential_in_use (sql/functions/zz_privileges.sql) and the
-- row-level security policy built on it: noetl_worker reads the credentials named by the
-- playbook or workload of a claimed command, and no other. (This file goes with the
-- function and its policy when workers read credentials only through a command they hold.)
begin;
select plan(11);

select noetl.put_credential('pg_main', 'postgres', '{"host": "h"}', '\xbeef', 'k2');
select noetl.put_credential('plain', 'http', null, null, null);

-- credential_in_use: the credentials of claimed commands
select * from noetl.register_playbook('t/cred', 'yaml', '{"workload": {"db": {"cred": "pg_wl"}},
    "workflow": [
      {"step": "q", "tool": {"kind": "postgres", "auth": "pg_main"},
       "plan": {"kind": "postgres", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}');
create temporary table run as
select noetl.start_execution('t/cred') as execution_id;
select is(
    noetl.credential_in_use('pg_main'), false,
    'a credential of a queued command only is not in use'
);
update noetl.command as c set status = 'claimed', claimed_by = 'w1'
from run
where c.execution_id = run.execution_id;
select is(
    noetl.credential_in_use('pg_main'), true,
    'a credential named by the playbook of a claimed command is in use'
);
select is(
    noetl.credential_in_use('pg_wl'), true, 'so is one named by its workload'
);
select is(
    noetl.credential_in_use('auth'), false, 'a key is not a name: only string values count'
);
select is(noetl.credential_in_use('plain'), false, 'an unnamed credential is not in use');

-- the worker's view: row-level security through credential_in_use
create function pg_temp.as_worker(p_sql text) returns text
language plpgsql as $$
declare
    v_out text;
begin
    set local role noetl_worker;
    begin
        execute p_sql into v_out;
    exception when others then
        v_out := sqlstate || ': ' || sqlerrm;
    end;
    reset role;
    return v_out;
end;
$$;
select is(
    pg_temp.as_worker($$select string_agg(name, ',' order by name) from noetl.credential$$),
    'pg_main', 'noetl_worker sees only the credentials in use'
);
select is(
    pg_temp.as_worker($$select key_id from noetl.get_credential('pg_main')$$),
    'k2', 'and reads one in use through get_credential'
);
select is(
    pg_temp.as_worker($$select key_id from noetl.get_credential('plain')$$),
    'P0002: credential "plain" not found', 'a credential not in use does not exist for it'
);
update noetl.command as c set status = 'done'
from run
where c.execution_id = run.execution_id;
select is(
    noetl.credential_in_use('pg_main'), false, 'once the command is done it is no longer in use'
);
select is(
    pg_temp.as_worker($$select count(*)::text from noetl.credential$$), '0',
    'and the worker sees no credential'
);
select is(current_user::text, session_user::text, 'the test is back in its own role');

select * from finish();
rollback;

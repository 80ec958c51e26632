-- wakeup.sql: waking idle workers after a commit that issued work. The default is NOTIFY
-- noetl_command; a session that publishes wake-ups over NATS (a worker whose NATS
-- connection is up sets `noetl.wakeup` to 'nats') sends none and instead collects how many
-- commands of each kind its transactions issued, which it takes after the commit
-- (take_wake_counts_v1) and publishes per kind. The database holds every command either way:
-- a lost wake-up of either kind only delays work until a worker polls.

-- The wake-up function took no arguments before it carried the kind.
drop function if exists noetl.notify_queue();

-- noetl.notify_queue(kind, n) -> void
-- Contract: wakes idle workers for `n` new due commands of `kind` (NULL: kinds unknown, e.g.
--   claims the reaper put back).
--   Default session: NOTIFY noetl_command (delivered at commit, folded to one per
--   transaction). Commits that NOTIFY serialise on one global lock.
--   Session with `noetl.wakeup` = 'nats': no NOTIFY; the counts are added to the session
--   setting `noetl.wake_counts` ({kind: n}, '*' for unknown kinds) for
--   noetl.take_wake_counts_v1. A session setting changed in a transaction that rolls back is
--   restored, so only committed work is counted.
--   Inside noetl.finish_and_claim (`noetl.defer_notify` on) the wake-up is deferred: that
--   call claims new work for its own worker in the same transaction and calls this
--   function again at its end only if due work is left for others; the counts collected
--   meanwhile (transaction-local `noetl.wake_pending`) are kept only then.
-- Locks: none (the NOTIFY queue lock is taken at commit).
create or replace function noetl.notify_queue(
    p_kind text default null,
    p_n integer default 1
) returns void
language plpgsql
as $$
declare
    v_nats boolean := coalesce(current_setting('noetl.wakeup', true) = 'nats', false);
    v_pending jsonb;
    v_counts jsonb;
begin
    if v_nats then
        v_pending := coalesce(
            nullif(current_setting('noetl.wake_pending', true), '')::jsonb, '{}'
        );
        if p_kind is not null and p_n > 0 then
            v_pending := v_pending || jsonb_build_object(
                p_kind, coalesce((v_pending ->> p_kind)::integer, 0) + p_n
            );
        end if;
    end if;
    if current_setting('noetl.defer_notify', true) = 'on' then
        perform set_config('noetl.notify_pending', 'on', true);
        if v_nats then
            perform set_config('noetl.wake_pending', v_pending::text, true);
        end if;
        return;
    end if;
    if not v_nats then
        perform pg_notify('noetl_command', '');
        return;
    end if;
    perform set_config('noetl.wake_pending', '', true);
    if v_pending = '{}' then
        v_pending := '{"*": 1}';
    end if;
    v_counts := coalesce(nullif(current_setting('noetl.wake_counts', true), '')::jsonb, '{}');
    select
        jsonb_object_agg(
            k.kind,
            coalesce((v_counts ->> k.kind)::integer, 0)
            + coalesce((v_pending ->> k.kind)::integer, 0)
        )
    into v_counts
    from (
        select jsonb_object_keys(v_counts) as kind
        union
        select jsonb_object_keys(v_pending)
    ) as k;
    perform set_config('noetl.wake_counts', v_counts::text, false);
end;
$$;

-- noetl.take_wake_counts_v1() -> jsonb
-- Worker protocol v1 (the unversioned take_wake_counts calls it, for older workers).
-- Contract: the wake-up counts ({kind: n}) this session's committed transactions collected
--   since the last call (see notify_queue), and clears them; '{}' when there are none.
--   Called after the commit that issued the work, so a publisher never announces work a
--   worker cannot see yet.
-- Locks: none.
create or replace function noetl.take_wake_counts_v1() returns jsonb
language plpgsql
as $$
declare
    v_counts text := nullif(current_setting('noetl.wake_counts', true), '');
begin
    if v_counts is null then
        return '{}';
    end if;
    perform set_config('noetl.wake_counts', '', false);
    return v_counts::jsonb;
end;
$$;

-- clock.sql: the engine's clock.

-- noetl.now() -> timestamptz
-- Contract: the time the engine's functions read instead of now(): the transaction's start
--   time, unless the setting `noetl.clock` holds a timestamp (tests set it, for the
--   transaction or the session, to move time forward instead of sleeping, e.g. to make a
--   retry due).
-- Locks: none.
-- Failure modes: raises when `noetl.clock` is set to something that is not a timestamp.
create or replace function noetl.now() returns timestamptz
language sql
stable
as $$
    select coalesce(nullif(current_setting('noetl.clock', true), '')::timestamptz, now());
$$;

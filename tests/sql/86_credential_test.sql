-- Direct tests of credentials (sql/functions/credential.sql): put_credential (insert,
-- replace, bad input), get_credential, list_credentials (never the secret) and
-- decrypt_pgp_credential (the pre-0012 rows; with or without pgcrypto on the server).
-- Secrets here are opaque bytes: the client encrypts them. What a worker may read
-- (command_credential_v1) is in 92_harden_test.sql.
begin;
select plan(16);

-- put_credential and get_credential
select noetl.put_credential('pg_main', 'postgres', '{"host": "h"}', '\xdead', 'k1');
select results_eq(
    $$select * from noetl.get_credential('pg_main')$$,
    $$values ('postgres'::text, '{"host": "h"}'::jsonb, '\xdead'::bytea, 'aes-256-gcm'::text,
              'k1'::text)$$,
    'a credential reads back as stored, its secret marked aes-256-gcm under its key id'
);
select noetl.put_credential('plain', 'http', null, null, 'unused');
select results_eq(
    $$select * from noetl.get_credential('plain')$$,
    $$values ('http'::text, '{}'::jsonb, null::bytea, null::text, null::text)$$,
    'without a secret: empty public data, no cipher and no key id'
);
select throws_ok(
    $$select noetl.get_credential('nope')$$,
    'P0002', 'credential "nope" not found', 'an unknown credential is named in the error'
);
select throws_ok(
    $$select noetl.put_credential('x', 'http', '{}', '\x01', null)$$,
    '22023', 'credential "x" has secret data but no key id', 'a secret needs a key id'
);
select throws_ok(
    $$select noetl.put_credential('x', 'http', '{}', '\x01', '')$$,
    '22023', null, 'an empty key id is no key id'
);
select throws_ok(
    $$select noetl.put_credential('x', 'ftp', '{}', null, null)$$,
    '23514', null, 'an unknown type is refused'
);
select throws_ok(
    $$select noetl.put_credential('x', 'http', '[1]', null, null)$$,
    '23514', null, 'public data must be an object'
);
select is(
    (
        select count(*)::integer from noetl.credential
        where name = 'x'
    ), 0,
    'refused credentials are not stored'
);

-- put_credential replaces every field but created_at
update noetl.credential set created_at = now() - interval '1 day', updated_at = created_at
where name = 'pg_main';
select noetl.put_credential('pg_main', 'generic', '{"user": "u"}', null, null);
select results_eq(
    $$select * from noetl.get_credential('pg_main')$$,
    $$values ('generic'::text, '{"user": "u"}'::jsonb, null::bytea, null::text, null::text)$$,
    'replacing a credential replaces its type, public data and secret'
);
select is(
    (
        select (created_at < now(), updated_at = now())::text from noetl.credential
        where name = 'pg_main'
    ),
    '(t,t)', 'it keeps created_at and moves updated_at'
);
select noetl.put_credential('pg_main', 'postgres', '{"host": "h"}', '\xbeef', 'k2');

-- list_credentials
select results_eq(
    $$select name, credential_type, public_data, has_secret, key_id
      from noetl.list_credentials()$$,
    $$values ('pg_main'::text, 'postgres'::text, '{"host": "h"}'::jsonb, true, 'k2'::text),
             ('plain', 'http', '{}', false, null)$$,
    'list_credentials lists every credential by name with has_secret and the key id'
);
select is(
    (
        select 'secret_data' = any(p.proargnames) from pg_proc as p
        where p.oid = 'noetl.list_credentials()'::regprocedure
    ),
    false, 'list_credentials has no secret_data column'
);

-- decrypt_pgp_credential
select throws_ok(
    $$select noetl.decrypt_pgp_credential('pg_main', 'k')$$,
    'P0002', 'credential "pg_main" has no pgcrypto secret',
    'a credential that is not a pgcrypto one cannot be opened this way'
);
select throws_ok(
    $$select noetl.decrypt_pgp_credential('nope', 'k')$$,
    'P0002', null, 'nor an unknown one'
);
do $$
begin
    if to_regprocedure('public.pgp_sym_encrypt(text,text)') is null then
        insert into noetl.credential (name, credential_type, secret_data, cipher)
        values ('old', 'generic', '\x00', 'pgp');
    else
        execute $sql$
            insert into noetl.credential (name, credential_type, secret_data, cipher)
            values (
                'old', 'generic',
                public.pgp_sym_encrypt('{"password": "s3"}', 'oldkey'), 'pgp'
            )
        $sql$;
    end if;
end
$$;
select case
    when to_regprocedure('public.pgp_sym_encrypt(text,text)') is null
        then
            throws_ok(
                $$select noetl.decrypt_pgp_credential('old', 'oldkey')$$,
                '0A000', null, 'without pgcrypto the old secret cannot be opened, and it says so'
            )
    else is(
        noetl.decrypt_pgp_credential('old', 'oldkey'), '{"password": "s3"}'::jsonb,
        'the old key opens a pgcrypto secret'
    )
end;
select case
    when to_regprocedure('public.pgp_sym_encrypt(text,text)') is null
        then skip('pgcrypto is not installed on this server', 1)
    else throws_ok(
        $$select noetl.decrypt_pgp_credential('old', 'wrong')$$,
        '28P01', 'credential "old" cannot be decrypted: wrong key or corrupt data',
        'a wrong key is refused, naming the credential only'
    )
end;

select * from finish();
rollback;

-- 0012_credential_client_crypto: credential secrets are encrypted by the client.
--
-- From this version the engine's Python code encrypts secret fields with AES-256-GCM
-- (noetl_pg.credential_crypto) and the server only stores the ciphertext and the id of
-- the key that made it: neither key nor plaintext is ever a statement parameter, so
-- log_statement = all cannot capture them, and servers without pgcrypto store secrets too.
--
-- Rows written before (pgp_sym_encrypt in the server) are marked cipher = 'pgp'. They are
-- refused when read, with a message pointing at `noetl credential rotate-key
-- --from-pgcrypto`, which opens them once with the old key and re-encrypts them client-side.
alter table noetl.credential add column if not exists cipher text;
alter table noetl.credential add column if not exists key_id text;

update noetl.credential set cipher = 'pgp'
where secret_data is not null and cipher is null;

alter table noetl.credential add constraint credential_cipher_known
check (
    (secret_data is null and cipher is null)
    or (secret_data is not null and cipher = 'pgp')
    or (secret_data is not null and cipher = 'aes-256-gcm' and key_id is not null)
);

-- The server-side encrypting signatures are gone; credential.sql defines the new ones.
drop function if exists noetl.put_credential(text, text, jsonb, jsonb, text);
drop function if exists noetl.get_credential(text, text);
drop function if exists noetl.list_credentials();

comment on table noetl.credential is
'Named credentials for tools (tool.auth). Secret fields live only in secret_data, encrypted '
'by the client (AES-256-GCM, cipher/key_id say how and under which key); the server never '
'sees the key or the plaintext.';

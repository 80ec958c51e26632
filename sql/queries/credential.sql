-- Credential statements (noetl_pg.credentials). Secrets travel only as AES-GCM ciphertext.

-- name: credential_put
-- Insert or replace a credential; secret_data is ciphertext made by the client.
select noetl.put_credential(
    %(credential)s, %(credential_type)s, %(public_data)s, %(secret_data)s, %(key_id)s
);

-- name: credential_get
-- One credential as stored (the client decrypts).
select
    credential_type,
    public_data,
    secret_data,
    cipher,
    key_id
from noetl.get_credential(%(credential)s);

-- name: credential_list
-- Every credential's public fields, whether it has secrets, and their key id.
select
    name,
    credential_type,
    public_data,
    has_secret,
    key_id,
    created_at,
    updated_at
from noetl.list_credentials();

-- name: credential_secrets_for_update
-- Every credential with secrets, locked for rotate-key.
select
    name,
    secret_data,
    cipher,
    key_id
from noetl.credential
where secret_data is not null
order by name
for update;

-- name: credential_reencrypt
-- Replace a credential's ciphertext and key id (rotate-key).
update noetl.credential
set
    secret_data = %(secret_data)s,
    cipher = 'aes-256-gcm',
    key_id = %(key_id)s,
    updated_at = now()
where name = %(credential)s;

-- name: credential_decrypt_pgp
-- Open a pre-0012 pgcrypto secret with the old key (rotate-key --from-pgcrypto only).
select noetl.decrypt_pgp_credential(%(credential)s, %(key)s) as secret;

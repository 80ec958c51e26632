-- Statements of the hardened worker protocol: credentials bound to a held command.

-- name: credential_for_command
-- A credential for a command the worker holds (worker id, command id, claim generation).
select
    credential_type,
    public_data,
    secret_data,
    cipher,
    key_id
from noetl.command_credential_v1(
    %(worker_id)s, %(command_id)s, %(claim_gen)s, %(credential)s
);

-- 0015_server: what the HTTP server (noetl server) needs of its own. Idempotent.

-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is stored: tokens are 256-bit
-- random strings, so a fast hash is enough and a stolen table yields no usable token.
create table if not exists noetl.api_token (
    name text primary key,
    role text not null check (role in ('reader', 'operator', 'admin')),
    token_sha256 bytea not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    constraint api_token_sha256_key unique (token_sha256)
);

comment on table noetl.api_token is
'Bearer tokens of the HTTP API (noetl server), each with a role: reader (read), operator '
'(also start, cancel, register), admin (also credentials). Only the SHA-256 is stored.';

-- /metrics reports claims and completions per second and step durations over a trailing
-- window. BRIN indexes keep those reads to the most recent block ranges (command rows are
-- claimed and finished roughly in insertion order) at almost no cost to the writers.
create index if not exists command_claimed_at_brin on noetl.command
using brin (claimed_at) with (pages_per_range = 16);
create index if not exists command_finished_at_brin on noetl.command
using brin (finished_at) with (pages_per_range = 16);

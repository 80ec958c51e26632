"""Every `NOETL_*` environment variable, read and checked in one place.

`Settings` (pydantic-settings) declares each variable once: its type, its default, the
section of docs/configuration.md it belongs to, what a valid value looks like, and whether
it is a secret. `current()` is the only reader of the process environment for `NOETL_*`
names; the rest of the package asks it. It parses again only when a `NOETL_*` variable
changed (tests set variables per test), so a call costs a comparison of the environment
with the one it last read (under a microsecond), not a parse. `from_mapping()` reads a
given mapping and nothing else.

A bad value raises `SettingsError`, one line naming the variable and what it expects; the
CLI calls `current()` before any command, so a bad value stops `noetl` at start with exit 2.
`docs/configuration.md` is generated from these fields (`noetl config docs`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from noetl_pg.errors import NoetlError

PREFIX = "NOETL_"
REDACTED = "***"

SECTIONS = (
    "Where the database is",
    "Workers",
    "NATS (optional)",
    "Results",
    "Credentials",
    "Limits on input",
    "Tests only",
)


class SettingsError(NoetlError, ValueError):
    """A `NOETL_*` variable has a value of the wrong kind; names it and what it expects."""


def _setting(default: Any, meaning: str, *, section: str, expects: str,
             shown_default: str | None = None, secret: bool = False, **limits: Any) -> Any:
    """A field with what docs/configuration.md and `noetl config show` need to know."""
    extra: dict[str, Any] = {"section": section, "expects": expects, "secret": secret}
    if shown_default is not None:
        extra["shown_default"] = shown_default
    return Field(default, description=meaning, json_schema_extra=extra, **limits)


_DB = "Where the database is"
_WORKERS = "Workers"
_NATS = "NATS (optional)"
_RESULTS = "Results"
_CREDENTIALS = "Credentials"
_LIMITS = "Limits on input"
_TESTS = "Tests only"
_SECONDS = "a number of seconds > 0"
_COUNT = "a whole number > 0"
_UNSET = "unset"


class Settings(BaseSettings):
    """The engine's configuration from `NOETL_<FIELD NAME>` variables (empty = unset)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values from_mapping() hands over: no .env file, and the environment is
        # read by current() alone (so a mapping given to from_mapping is all there is).
        return (init_settings,)

    # --- where the database is
    dsn: str | None = _setting(
        None, "libpq connection string of the engine database", section=_DB,
        expects="a libpq connection string", shown_default="unset: the embedded server",
        secret=True)
    embedded_dir: Path | None = _setting(
        None, "where the embedded server keeps its data directory", section=_DB,
        expects="a directory path",
        shown_default="the user data dir (`~/.local/share/noetl-pg`; `/var/lib/noetl-pg` for "
                      "root)")
    server_url: str | None = _setting(
        None, "with it, CLI verbs go to a `noetl server` over HTTP instead of SQL", section=_DB,
        expects="a URL such as http://127.0.0.1:8082", pattern=r"^https?://\S+$")
    server_token: str | None = _setting(
        None, "bearer token for `NOETL_SERVER_URL`", section=_DB, expects="a token",
        secret=True)
    host: str = _setting("127.0.0.1", "address `noetl server` listens on", section=_DB,
                         expects="a host name or address")
    port: int = _setting(8082, "port `noetl server` listens on", section=_DB,
                         expects="a port number from 1 to 65535", ge=1, le=65535)
    server_auth_cache_seconds: float = _setting(
        5.0, "how long the server trusts a checked token", section=_DB,
        expects="a number of seconds >= 0", ge=0)

    # --- workers
    worker_id: str | None = _setting(
        None, "the worker's id (`noetl worker start`, `noetl worker probe`)", section=_WORKERS,
        expects="a worker id",
        shown_default="host-pid-random; `workers/entrypoint.sh` sets the host name")
    worker_heartbeat_seconds: float = _setting(
        5.0, "how often a worker proves it is alive", section=_WORKERS, expects=_SECONDS, gt=0)
    worker_start_wait_seconds: float = _setting(
        300.0, "how long a starting worker waits for an unreachable database (it may be "
        "restarting) before it exits", section=_WORKERS, expects="a number of seconds >= 0",
        ge=0)
    command_heartbeat_timeout_seconds: float = _setting(
        300.0, "claims of a worker silent this long are taken back by the reaper",
        section=_WORKERS, expects=_SECONDS, gt=0)
    max_reclaims: int = _setting(
        5, "a command whose claims were taken back this often (it keeps killing workers) fails",
        section=_WORKERS, expects="a whole number >= 0", ge=0)
    shard_count: int | None = _setting(
        None, "projection shards (executions folded into `noetl.execution_state` per shard)",
        section=_WORKERS, expects=_COUNT, shown_default="`16`", ge=1)
    python_isolation: Literal["process", "inline"] = _setting(
        "process", "`process` (an executor process per slot) or `inline` (in the worker thread)",
        section=_WORKERS, expects="process or inline")
    python_timeout: float = _setting(
        600.0, "seconds a python step may run when the step sets no timeout (0: no limit)",
        section=_WORKERS, expects="a number of seconds >= 0", ge=0)
    python_log_bytes: int = _setting(
        65536, "stdout/stderr kept per stream and call (head and tail)", section=_WORKERS,
        expects="a number of bytes > 0", ge=1)
    python_log_max_bytes: int = _setting(
        16 * 1024 * 1024, "a longer stream is also kept whole, up to this many bytes (head and "
        "tail beyond), in the result store (`noetl logs --full`)", section=_WORKERS,
        expects="a number of bytes > 0", ge=1)
    executor_user: str | None = _setting(
        None, "the OS user python executors run as under a root worker", section=_WORKERS,
        expects="a user name", shown_default="`noetl-exec`")
    pg_pool_max_size: int | None = _setting(
        None, "connections per pool of the postgres tool", section=_WORKERS, expects=_COUNT,
        shown_default="the worker's slots (`4` outside a worker)", ge=1)
    http_max_connections: int = _setting(
        100, "http tool: connections per worker", section=_WORKERS, expects=_COUNT, ge=1)
    http_max_keepalive_connections: int = _setting(
        20, "http tool: idle connections kept", section=_WORKERS,
        expects="a whole number >= 0", ge=0)
    http_keepalive_expiry_seconds: float = _setting(
        5.0, "http tool: how long an idle connection is kept", section=_WORKERS,
        expects="a number of seconds >= 0", ge=0)

    # --- NATS (noetl_pg/nats_bus.py; docs/operations.md says when to turn it on)
    nats_url: str | None = _setting(
        None, "NATS server (JetStream on) for wake-ups, targeted offers and heartbeat reports; "
              "needs `noetl-pg[nats]`", section=_NATS,
        expects="a URL such as nats://127.0.0.1:4222", shown_default="unset: LISTEN/NOTIFY only",
        pattern=r"^(nats|tls|ws|wss)://\S+$")
    nats_prefix: str = _setting(
        "noetl", "first token of every subject and of the stream names (upper-cased), so "
                 "deployments can share one NATS server", section=_NATS,
        expects="letters, digits, - and _", pattern=r"^[A-Za-z0-9_-]+$")

    # --- results
    inline_max_bytes: int = _setting(
        65536, "results up to this size stay inline in the event", section=_RESULTS,
        expects="a number of bytes >= 0", ge=0)
    pvc_mount_path: Path | None = _setting(
        None, "a shared mount for the `fs`/`pvc` result tier", section=_RESULTS,
        expects="a directory path")
    pvc_tier_threshold_bytes: int = _setting(
        1_048_576, "results above this go to the shared mount when there is one",
        section=_RESULTS, expects="a number of bytes >= 0", ge=0)
    s3_endpoint: str | None = _setting(
        None, "S3-compatible endpoint of the `s3`/`minio` tier (needs `noetl-pg[s3]`)",
        section=_RESULTS, expects="a URL such as http://127.0.0.1:9000",
        pattern=r"^https?://\S+$")
    s3_bucket: str = _setting("noetl-results", "bucket of the s3 tier", section=_RESULTS,
                              expects="a bucket name")
    s3_region: str = _setting("us-east-1", "region of the s3 tier", section=_RESULTS,
                              expects="a region name")
    s3_access_key_id: str | None = _setting(
        None, "access key of the s3 tier (else boto3's own chain)", section=_RESULTS,
        expects="an access key id")
    s3_secret_access_key: str | None = _setting(
        None, "secret key of the s3 tier", section=_RESULTS, expects="a secret key",
        secret=True)

    # --- credentials
    credential_key: str | None = _setting(
        None, "the key that encrypts credentials' secret fields (client side)",
        section=_CREDENTIALS, expects="a key", secret=True)
    credential_key_file: Path | None = _setting(
        None, "a file holding that key, instead of the variable", section=_CREDENTIALS,
        expects="a file path")
    credential_new_key: str | None = _setting(
        None, "the new key for `noetl credential rotate`", section=_CREDENTIALS,
        expects="a key", secret=True)
    credential_new_key_file: Path | None = _setting(
        None, "a file holding the new key", section=_CREDENTIALS, expects="a file path")

    # --- limits on input
    max_playbook_bytes: int = _setting(
        1_048_576, "largest playbook document", section=_LIMITS, expects=_COUNT, ge=1)
    max_playbook_nodes: int = _setting(
        200_000, "YAML nodes after alias expansion", section=_LIMITS, expects=_COUNT, ge=1)
    max_playbook_depth: int = _setting(64, "nesting levels", section=_LIMITS, expects=_COUNT,
                                       ge=1)
    max_playbook_steps: int = _setting(10_000, "steps in `workflow`", section=_LIMITS,
                                       expects=_COUNT, ge=1)
    max_commands: int | None = _setting(
        None, "commands one execution may issue, stored at registration", section=_LIMITS,
        expects=_COUNT, shown_default="see `noetl_pg/budget.py`", ge=1)

    # --- tests only
    test_dsn: str | None = _setting(
        None, "server where tests create their databases", section=_TESTS,
        expects="a libpq connection string", secret=True)
    test_server: Literal["embedded"] | None = _setting(
        None, "`embedded` forces the embedded server for tests", section=_TESTS,
        expects="embedded")


def variable(name: str) -> str:
    """The environment variable of field `name`."""
    return PREFIX + name.upper()


def field_name(env_variable: str) -> str:
    """The field of `env_variable` (NOETL_DSN -> dsn)."""
    return env_variable.removeprefix(PREFIX).lower()


def field_extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    assert isinstance(extra, dict), "every setting is declared with _setting()"
    return extra


def _error(exc: ValidationError, given: Mapping[str, Any]) -> SettingsError:
    """The first problem of `exc` as one line: the variable, its value, what it expects."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    info = Settings.model_fields.get(name)
    if info is None:
        return SettingsError(f"bad NOETL_* setting: {first['msg']}")
    shown = REDACTED if field_extra(info)["secret"] else given.get(name, first.get("input"))
    return SettingsError(f"{variable(name)}={shown!r}: expects {field_extra(info)['expects']}")


def _noetl_items(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((key, value) for key, value in env.items() if key.startswith(PREFIX)))


def from_mapping(env: Mapping[str, str]) -> Settings:
    """Settings from `env` alone (NOETL_* keys; others ignored). SettingsError when bad."""
    given: dict[str, Any] = {}
    for key, value in _noetl_items(env):
        name = key[len(PREFIX):].lower()
        if name in Settings.model_fields and value.strip():
            given[name] = value.strip()
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise _error(exc, given) from None


_cache: dict[tuple[tuple[str, str], ...], Settings] = {}
# The raw environment (os.environ's bytes mapping on POSIX) current() last read, copied,
# with its settings: while the environment is unchanged a call costs one dict comparison
# in C (under 1 us) instead of a scan of every variable in Python (3 us); current() runs
# for every python command.
_last_read: tuple[dict[bytes, bytes], Settings] | None = None


def _cached(items: tuple[tuple[str, str], ...]) -> Settings:
    found = _cache.get(items)
    if found is None:
        found = from_mapping(dict(items))
        _cache.clear()
        _cache[items] = found
    return found


def current() -> Settings:
    """The settings of this process's environment now. SettingsError when one is bad."""
    global _last_read
    raw: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)  # POSIX: bytes
    if raw is None:
        return _cached(_noetl_items(os.environ))
    last = _last_read
    if last is not None and last[0] == raw:
        return last[1]
    # The copy is what is parsed: a variable another thread sets meanwhile is a change
    # the next call sees, never one hidden behind settings read before it.
    snapshot = dict(raw)
    prefix = os.fsencode(PREFIX)
    found = _cached(tuple(sorted((os.fsdecode(key), os.fsdecode(value))
                                 for key, value in snapshot.items() if key.startswith(prefix))))
    _last_read = (snapshot, found)
    return found

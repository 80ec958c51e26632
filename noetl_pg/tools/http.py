"""`kind: http`: one HTTP request through the worker's pooled httpx client.

Config keys: `method` (default GET), `url` (alias `endpoint`), `headers`, `params`,
`payload` / `json` / `body`, `timeout` (seconds; default the step's timeout, else 30),
`follow_redirects` (default true), `auth`.

Body rules (as NoETL does): `json` is always sent as a JSON body. `payload` / `body` on
GET, HEAD, DELETE and OPTIONS become query parameters when they are a mapping (explicit
`params` win on a clash); on other methods a mapping or list is sent as JSON and a string
or bytes as the raw body.

`auth` is a credential name or an inline mapping. A credential (or mapping) with `token`
gets `Authorization: Bearer <token>`; one with `username` and `password` gets basic auth.
An inline mapping may say `type: bearer|basic`; `{credential: NAME}` names a credential.

Result: `{status_code, headers, url, elapsed, data}` (as NoETL; `url` without its query
string or user-info, `elapsed` in seconds); `data` is the decoded JSON when the response says
JSON, the text for textual types, and base64 for binary types (then `encoding: base64`).
A non-2xx response raises `ToolError` with output `{"http": {"status": code}, "data": body}`;
a timeout raises `ToolTimeout`. Request headers are never part of a result, and messages
carry the URL without its query string or user-info.
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noetl_pg import settings
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext

if TYPE_CHECKING:  # imported where a request is made: every CLI command loads the registry
    import httpx

DEFAULT_TIMEOUT_SECONDS = 30.0
PARAMS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
TEXT_CONTENT_MARKERS = ("text/", "xml", "javascript", "x-www-form-urlencoded", "csv", "yaml")

_client_lock = threading.Lock()


def build_client() -> httpx.Client:
    """A pooled client sized from the NOETL_HTTP_* environment variables."""
    import httpx

    configured = settings.current()
    limits = httpx.Limits(
        max_connections=configured.http_max_connections,
        max_keepalive_connections=configured.http_max_keepalive_connections,
        keepalive_expiry=configured.http_keepalive_expiry_seconds,
    )
    return httpx.Client(limits=limits)


def worker_client(resources: dict[str, Any]) -> httpx.Client:
    """The worker's shared client, created once even when several threads ask at once."""
    client = resources.get(HttpTool.kind)
    if client is None:
        with _client_lock:
            client = resources.get(HttpTool.kind)
            if client is None:
                client = build_client()
                resources[HttpTool.kind] = client
    return client


def safe_url(url: str) -> str:
    """The URL without user-info, query string or fragment (for messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _auth_fields(auth: Any, context: ToolContext) -> Mapping[str, Any]:
    if isinstance(auth, str):
        if context.credentials is None:
            raise ToolError(f"http auth '{auth}': no credential resolver is configured")
        return context.credentials.get(auth)
    if isinstance(auth, Mapping):
        name = auth.get("credential") or auth.get("key")
        if isinstance(name, str) and not ({"token", "username", "password"} & auth.keys()):
            return _auth_fields(name, context)
        return auth
    raise ToolError("http auth must be a credential name or a mapping")


def auth_header(auth: Any, context: ToolContext) -> str | None:
    """The Authorization header value for `auth`, or None when there is no auth."""
    if auth is None or auth == "" or auth == {}:
        return None
    fields = _auth_fields(auth, context)
    kind = str(fields.get("type") or fields.get("credential_type") or "").lower()
    token = fields.get("token") or fields.get("bearer_token") or fields.get("access_token")
    if token and kind != "basic":
        return f"Bearer {token}"
    username, password = fields.get("username"), fields.get("password")
    if username is not None and password is not None:
        raw = f"{username}:{password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")
    raise ToolError("http auth needs a `token` (bearer) or `username` and `password` (basic)")


def decode_body(response: httpx.Response) -> tuple[Any, str | None]:
    """(data, encoding): JSON decoded, text as text, anything else base64."""
    content_type = response.headers.get("content-type", "").lower()
    if "json" in content_type:
        if not response.content:
            return None, None
        try:
            return response.json(), None
        except ValueError:
            return response.text, None
    if not content_type or any(m in content_type for m in TEXT_CONTENT_MARKERS):
        return response.text, None
    return base64.b64encode(response.content).decode("ascii"), "base64"


def _request_arguments(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    if "json" in config and config["json"] is not None:
        arguments["json"] = config["json"]
    for key in ("payload", "body"):
        value = config.get(key)
        if value is None:
            continue
        if method in PARAMS_METHODS and isinstance(value, Mapping):
            params.update(value)
        elif isinstance(value, str | bytes):
            arguments["content"] = value
        else:
            arguments["json"] = value
    params.update(config.get("params") or {})
    if params:
        arguments["params"] = {k: v for k, v in params.items() if v is not None}
    headers = config.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ToolError("http headers must be a mapping")
    arguments["headers"] = {str(k): str(v) for k, v in headers.items()}
    return arguments


class HttpTool:
    """One HTTP request; see the module docstring for keys and result."""

    kind: ClassVar[str] = "http"
    config_keys: ClassVar[frozenset[str]] = frozenset({
        "method", "url", "endpoint", "headers", "params", "payload", "json", "body", "timeout",
        "auth", "credential", "follow_redirects"})

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        import httpx

        url = config.get("url") or config.get("endpoint")
        if not url or not isinstance(url, str):
            raise ToolError("http tool needs `url` (or `endpoint`)")
        method = str(config.get("method") or "GET").upper()
        arguments = _request_arguments(config, method)
        # `credential:` is NoETL's other name for `auth:`.
        header = auth_header(config.get("auth", config.get("credential")), context)
        if header:
            arguments["headers"]["Authorization"] = header
        timeout = float(config.get("timeout") or context.timeout_seconds or DEFAULT_TIMEOUT_SECONDS)
        where = f"{method} {safe_url(url)}"
        client = worker_client(context.worker_resources)
        try:
            response = client.request(
                method,
                url,
                timeout=timeout,
                follow_redirects=bool(config.get("follow_redirects", True)),
                **arguments,
            )
        except httpx.TimeoutException as exc:
            raise ToolTimeout(
                f"http {where} timed out after {timeout:g}s ({type(exc).__name__})",
                output={"http": {"status": None}},
            ) from None
        except httpx.HTTPError as exc:
            raise ToolError(
                f"http {where} failed: {type(exc).__name__}",
                output={"http": {"status": None}, "error": type(exc).__name__},
            ) from None
        data, encoding = decode_body(response)
        if not response.is_success:
            raise ToolError(
                f"http {where} returned {response.status_code}",
                output={"http": {"status": response.status_code}, "data": data},
            )
        # NoETL's shape: status, headers, the final URL (without query string or
        # user-info, which may carry secrets) and the seconds the exchange took.
        result: dict[str, Any] = {
            "status_code": response.status_code,
            "headers": dict(response.headers),
            "url": safe_url(str(response.url)),
            "elapsed": response.elapsed.total_seconds(),
            "data": data,
        }
        if encoding:
            result["encoding"] = encoding
        return result

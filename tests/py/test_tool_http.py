"""The http tool against a local server started by the test (never the Internet)."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from noetl_pg.credentials import MappingCredentialResolver
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.http import HttpTool, worker_client

TOKEN = "tok-s3cr3t-value"
LARGE_BODY = b"x" * (3 * 1024 * 1024)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/json":
            self._json(200, {"ok": True, "query": query})
        elif url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self._json(code, {"error": f"status {code}"})
        elif url.path == "/slow":
            time.sleep(2)
            self._json(200, {"slow": True})
        elif url.path == "/large":
            self._send(200, LARGE_BODY, "text/plain")
        elif url.path == "/binary":
            self._send(200, b"\x00\x01\xff", "application/octet-stream")
        elif url.path == "/auth":
            # Says how the request authenticated, without echoing the credential back.
            header = self.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            basic = value if scheme == "Basic" else None
            self._json(200, {"scheme": scheme, "token_ok": value == TOKEN, "basic": basic})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        self._json(
            201,
            {
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
                "path": self.path,
            },
        )

    do_PUT = do_POST


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def resources() -> Iterator[dict]:
    shared: dict = {}
    yield shared
    for resource in shared.values():
        resource.close()


@pytest.fixture
def context(resources: dict) -> ToolContext:
    credentials = MappingCredentialResolver(
        {
            "api": {"credential_type": "http", "token": TOKEN},
            "basic": {"credential_type": "http", "username": "ann", "password": "pw-basic-1"},
        }
    )
    return ToolContext(
        execution_id=1, step="call", command_id=1, attempt=1, dsn="", credentials=credentials,
        worker_resources=resources,
    )


def run(config: dict, context: ToolContext) -> dict:
    return HttpTool().run(config, context)


def test_get_json_with_params(base_url: str, context: ToolContext) -> None:
    result = run({"url": f"{base_url}/json", "params": {"day": "2024-01-01"}}, context)
    assert result["status_code"] == 200
    assert result["data"] == {"ok": True, "query": {"day": "2024-01-01"}}
    assert result["headers"]["content-type"] == "application/json"


def test_get_payload_becomes_query_params(base_url: str, context: ToolContext) -> None:
    result = run({"endpoint": f"{base_url}/json", "payload": {"a": 1}, "params": {"b": 2}}, context)
    assert result["data"]["query"] == {"a": "1", "b": "2"}


def test_post_payload_is_json(base_url: str, context: ToolContext) -> None:
    result = run({"method": "post", "url": f"{base_url}/items", "payload": {"x": [1, 2]}}, context)
    assert result["status_code"] == 201
    assert result["data"]["content_type"] == "application/json"
    assert result["data"]["body"] == {"x": [1, 2]}
    put = run({"method": "PUT", "url": f"{base_url}/items", "json": {"y": 1}}, context)
    assert put["data"]["body"] == {"y": 1}


@pytest.mark.parametrize("code", [404, 500, 503])
def test_error_status_raises_with_status_and_body(
    base_url: str, context: ToolContext, code: int
) -> None:
    with pytest.raises(ToolError) as caught:
        run({"url": f"{base_url}/status/{code}?api_key=hidden"}, context)
    assert caught.value.output == {"http": {"status": code}, "data": {"error": f"status {code}"}}
    assert str(code) in caught.value.message
    assert "hidden" not in caught.value.message
    assert caught.value.kind == "error"


def test_timeout_raises_tool_timeout(base_url: str, context: ToolContext) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as caught:
        run({"url": f"{base_url}/slow", "timeout": 0.3}, context)
    assert time.monotonic() - started < 1.5
    assert caught.value.kind == "timeout"
    assert caught.value.output == {"http": {"status": None}}


def test_connection_refused_is_a_tool_error(context: ToolContext) -> None:
    with pytest.raises(ToolError) as caught:
        run({"url": "http://127.0.0.1:9/nothing", "timeout": 2}, context)
    assert caught.value.output["http"] == {"status": None}


def test_large_text_body(base_url: str, context: ToolContext) -> None:
    result = run({"url": f"{base_url}/large"}, context)
    assert len(result["data"]) == len(LARGE_BODY)


def test_binary_body_is_base64(base_url: str, context: ToolContext) -> None:
    result = run({"url": f"{base_url}/binary"}, context)
    assert result["data"] == "AAH/"
    assert result["encoding"] == "base64"


def test_bearer_auth_from_credential_stays_out_of_result(
    base_url: str, context: ToolContext
) -> None:
    result = run({"url": f"{base_url}/auth", "auth": "api"}, context)
    assert result["data"]["scheme"] == "Bearer"
    assert result["data"]["token_ok"] is True
    assert TOKEN not in json.dumps(result)


def test_inline_bearer_and_basic_auth(base_url: str, context: ToolContext) -> None:
    inline = run({"url": f"{base_url}/auth", "auth": {"type": "bearer", "token": TOKEN}}, context)
    assert inline["data"]["token_ok"] is True
    basic = run({"url": f"{base_url}/auth", "auth": "basic"}, context)
    assert basic["data"]["scheme"] == "Basic"
    assert basic["data"]["basic"] == base64.b64encode(b"ann:pw-basic-1").decode()


def test_auth_error_does_not_leak(base_url: str, context: ToolContext) -> None:
    with pytest.raises(ToolError) as caught:
        run({"url": f"{base_url}/status/401", "auth": "api"}, context)
    assert TOKEN not in str(caught.value) and TOKEN not in json.dumps(caught.value.output)


def test_one_client_per_worker_even_across_threads(resources: dict) -> None:
    clients: list = []
    threads = [
        threading.Thread(target=lambda: clients.append(worker_client(resources)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1
    assert resources["http"] is clients[0]


def test_missing_url_is_an_error(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="url"):
        run({"method": "GET"}, context)

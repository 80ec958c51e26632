"""The heavy-payload example's HTTP endpoint: a local echo server on 127.0.0.1.

Every POST answers 200 with a JSON document that echoes the request body back, like
httpbin's `/anything` (the endpoint NoETL's fixture posts to):
`{"path": ..., "received_bytes": <body size>, "json": <the body, parsed>}`. So a response
is as large as its request, and the python task after the http task has a big response
to project.

    python examples/heavy_payload/echo_server.py [--port 8765]

prints the URL to put in `details_api_url` and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_PORT = 8765
DETAIL_PATH = "/heavy-item-detail"


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the worker's pooled client reuses connections

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            document: Any = json.loads(raw) if raw else None
        except ValueError:
            document = None
        body = json.dumps({"path": self.path, "received_bytes": len(raw),
                           "json": document}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # one line per item is noise
        return


def start(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve in a daemon thread on 127.0.0.1 (`port` 0: any free port); returns the server
    and the URL of the detail endpoint. Stop it with `server.shutdown()`."""
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}{DETAIL_PATH}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), EchoHandler)
    server.daemon_threads = True
    print(f"echo server: http://127.0.0.1:{server.server_address[1]}{DETAIL_PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

"""A small HTTP client for a noetl server (or NoETL's): what the CLI sends with --server."""

from __future__ import annotations

import time
from typing import Any

from noetl_pg import settings
from noetl_pg.errors import NoetlError


class RemoteError(NoetlError):
    """The server refused a request or could not be reached; the message says which."""


class ServerClient:
    """Calls NoETL's API paths on `base_url` with the bearer token of NOETL_SERVER_TOKEN."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        token = token if token is not None else settings.current().server_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Imported here: every CLI command loads this module, few talk to a server.
        import httpx

        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                                   for d in detail)
            raise RemoteError(f"{self.base_url}{path}: {response.status_code} {detail}")
        return response.json()

    def register(self, content: str) -> dict[str, Any]:
        registered: dict[str, Any] = self._call(
            "POST", "/api/catalog/register",
            json={"content": content, "resource_type": "Playbook"})
        return registered

    def catalog_list(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._call("POST", "/api/catalog/list",
                                                   json={})["entries"]
        return entries

    def execute(self, path: str, payload: dict[str, Any], version: int | None) -> str:
        body: dict[str, Any] = {"path": path, "payload": payload}
        if version is not None:
            body["version"] = version
        return str(self._call("POST", "/api/execute", json=body)["execution_id"])

    def status(self, execution_id: int | str) -> dict[str, Any]:
        status: dict[str, Any] = self._call("GET", f"/api/executions/{execution_id}/status")
        return status

    def cancel(self, execution_id: int | str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/executions/{execution_id}/cancel",
                                            json={"reason": reason})
        return result

    def wait(self, execution_id: int | str, *, timeout: float | None = None,
             poll: float = 0.5) -> dict[str, Any]:
        """Poll the status until the execution finishes; TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(execution_id)
            # NoETL's status has no status field, only these flags (cancelled: completed);
            # ours also says when its steps and loops are projected up to the end.
            if (status.get("completed") or status.get("failed")) \
                    and status.get("projected", True):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} still {status['status']}")
            time.sleep(poll)

"""`kind: artifact`: load or store a JSON (or text) artifact on the worker's filesystem.

NoETL's artifact tool, for the backends that need no outside service: `file://` URIs,
`artifact://localfs/<path>` / `artifact://<path>`, and plain paths, on the disk of the
worker that runs the step (share a volume between workers to read on one what another
wrote). NoETL's `s3://`, `gs://`, `nats-kv://` and `eventlog://` backends are refused with
a message naming the scheme; `noetl://` refs of our own result store are read through it.

Config keys (NoETL's): `action` (`get`, the default, or `put`), `uri`, `result_ref` (a ref
dict or `noetl://` URI of a stored result, for `get`), `data` (for `put`), `compress`
(`put`; default true: gzip, `.gz` appended), `credential` (accepted for NoETL's cloud
backends; unused by the filesystem).

Result, as NoETL returns it: `get` -> `{status: success, data, uri, size_bytes,
compressed}` (data parsed as JSON when it is JSON, else the text); `put` -> `{status:
success, uri, size_bytes, sha256, compressed}`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlparse

from noetl_pg.errors import ToolError
from noetl_pg.tools.base import ToolContext

SERVICE_SCHEMES = frozenset({"s3", "gs", "gcs", "nats-kv", "nats-obj", "eventlog"})


def _path_of(uri: str) -> str:
    if uri.startswith("artifact://localfs/"):
        path = "/" + uri[len("artifact://localfs/"):]
    elif uri.startswith("artifact://"):
        path = uri[len("artifact://"):]
    elif uri.startswith("file://"):
        path = uri[len("file://"):]
    else:
        path = uri
    return os.path.abspath(os.path.expanduser(path))


def _check_scheme(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme in SERVICE_SCHEMES:
        raise ToolError(f"artifact: {scheme}:// needs a service noetl-pg does not have "
                        "(supported: file://, artifact://, a path, noetl:// result refs)")
    if scheme not in ("", "file", "artifact", "noetl"):
        raise ToolError(f"artifact: unsupported scheme {scheme}://")


class ArtifactTool:
    """Get or put an artifact on the local filesystem; see the module docstring."""

    kind: ClassVar[str] = "artifact"
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {"action", "uri", "result_ref", "data", "compress", "credential"})

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        action = str(config.get("action") or "get")
        if action == "get":
            return self._get(config, context)
        if action == "put":
            return self._put(config)
        raise ToolError(f"artifact: action must be 'get' or 'put', got {action!r}")

    def _get(self, config: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        ref = config.get("result_ref")
        uri = config.get("uri")
        if ref is not None and context.results is not None and context.results.is_ref(ref):
            return {"status": "success", "data": context.results.resolve(ref),
                    "uri": ref if isinstance(ref, str) else ref.get("result_ref"),
                    "size_bytes": None, "compressed": False}
        if not isinstance(uri, str) or not uri:
            raise ToolError("artifact get needs `uri` (or `result_ref` of a stored result)")
        _check_scheme(uri)
        if uri.startswith("noetl://"):
            if context.results is None:
                raise ToolError("artifact: noetl:// refs need the result store")
            return {"status": "success", "data": context.results.resolve(uri), "uri": uri,
                    "size_bytes": None, "compressed": False}
        path = _path_of(uri)
        compressed = path.endswith((".gz", ".gzip"))
        try:
            if compressed:
                with gzip.open(path, "rt", encoding="utf-8") as handle:
                    content = handle.read()
            else:
                with open(path, encoding="utf-8") as handle:
                    content = handle.read()
        except FileNotFoundError:
            raise ToolError(f"artifact not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolError(f"artifact cannot be read: {path}: {exc}") from None
        try:
            data: Any = json.loads(content)
        except json.JSONDecodeError:
            data = content
        return {"status": "success", "data": data, "uri": uri,
                "size_bytes": os.path.getsize(path), "compressed": compressed}

    def _put(self, config: Mapping[str, Any]) -> dict[str, Any]:
        uri = config.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ToolError("artifact put needs `uri`")
        _check_scheme(uri)
        if uri.startswith("noetl://"):
            raise ToolError("artifact put cannot write noetl:// refs (results are stored "
                            "by the engine)")
        if "data" not in config:
            raise ToolError("artifact put needs `data`")
        data = config.get("data")
        content = json.dumps(data, indent=2) if isinstance(data, dict | list) else str(data)
        compress = config.get("compress", True) not in (False, "false", "False", 0)
        path = _path_of(uri)
        if compress and not path.endswith(".gz"):
            path += ".gz"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if compress:
                with gzip.open(path, "wt", encoding="utf-8") as handle:
                    handle.write(content)
            else:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(content)
        except OSError as exc:
            raise ToolError(f"artifact cannot be written: {path}: {exc}") from None
        return {"status": "success",
                "uri": uri if uri.startswith("artifact://") else f"artifact://localfs{path}",
                "size_bytes": os.path.getsize(path),
                "sha256": hashlib.sha256(content.encode("utf-8")).hexdigest(),
                "compressed": compress}

"""What one command sees of the result store: refs loaded at most once, and as local files.

A worker makes one `CommandResults` per command it runs. The executor loads through it the
stored results a command's templates read, before they render (noetl_pg.namespace), tools
through `ToolContext.results`; each ref is read once per command and the values are dropped
with the command, so a long loop over large results keeps the worker's memory flat.
`local_path` gives DuckDB (and the postgres tool) a file: fs/pvc refs in place, other tiers
copied to a temporary directory that `close()` removes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noetl_pg.store import ResultRef, ResultStore


def ref_uri(ref: Any) -> str:
    """The `noetl://` URI of a ref dict, a ResultRef or a URI string."""
    if isinstance(ref, ResultRef):
        return ref.ref
    if isinstance(ref, Mapping):
        return str(ref["result_ref"])
    return str(ref)


class CommandResults:
    """Per-command access to stored results (implements tools.base.ResultAccess).

    Not thread-safe: one command runs on one slot thread. Store errors propagate
    (`ResultMissing`, `ResultCorrupt`, `StoreUnavailable`).
    """

    def __init__(self, store: ResultStore) -> None:
        self._store = store
        self._values: dict[str, Any] = {}
        self._paths: dict[str, str] = {}
        self._temp_dir: Path | None = None

    @staticmethod
    def is_ref(value: Any) -> bool:
        return ResultStore.is_ref(value)

    def resolve(self, ref: Any) -> Any:
        """The stored value (decoded JSON, or bytes), read once per command."""
        uri = ref_uri(ref)
        if uri not in self._values:
            self._values[uri] = self._store.resolve(uri)
        return self._values[uri]

    def local_path(self, ref: Any) -> str:
        """A file holding the ref's bytes: the fs/pvc file itself, else a temporary copy
        streamed from its tier (removed by `close`)."""
        uri = ref_uri(ref)
        if uri in self._paths:
            return self._paths[uri]
        path = self._store.local_path(uri)
        if path is None:
            if self._temp_dir is None:
                self._temp_dir = Path(tempfile.mkdtemp(prefix="noetl-ref-"))
            path = self._temp_dir / f"{len(self._paths)}-{uri.rsplit('/', 1)[-1]}"
            with self._store.open(uri) as source, open(path, "wb") as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
        self._paths[uri] = str(path)
        return self._paths[uri]

    def close(self) -> None:
        """Drop loaded values and remove temporary copies."""
        self._values.clear()
        self._paths.clear()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

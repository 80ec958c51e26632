"""The `fs` / `pvc` tier: files under a directory shared by every worker (`NOETL_PVC_MOUNT_PATH`).

Objects live at `<mount>/noetl-results/<execution_id>/<step>/<name>/<token>`; the physical URI
is `fs://noetl-results/...`, relative to the mount, so pods that mount the same volume at
different paths resolve the same ref. A write goes to `<path>.partial`, is fsynced, then
renamed into place: readers in other processes see the whole file or no file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from noetl_pg.store.base import (
    CHUNK_SIZE,
    Digest,
    ObjectKey,
    ResultMissing,
    StoredObject,
    StoreUnavailable,
    Tier,
)

ROOT = "noetl-results"
SCHEME = "fs://"


class FsTier(Tier):
    """Files under `mount_path`. `StoreUnavailable` when the mount is missing or read-only."""

    name = "fs"

    def __init__(self, mount_path: str | os.PathLike[str]) -> None:
        self.mount_path = Path(mount_path)

    def ensure_ready(self) -> None:
        """Create the results root; `StoreUnavailable` if the mount is absent or not writable."""
        if not self.mount_path.is_dir():
            raise StoreUnavailable(self.name, f"mount path {self.mount_path} is not a directory")
        root = self.mount_path / ROOT
        try:
            root.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(self.name, f"cannot create {root}: {exc}") from exc
        if not os.access(root, os.W_OK | os.X_OK):
            raise StoreUnavailable(self.name, f"{root} is not writable")

    def put_stream(self, key: ObjectKey, chunks: Iterable[bytes]) -> StoredObject:
        """Write the chunks to a new file; a failed write removes its partial file.

        `StoreUnavailable` on any OS error (disk full, mount gone, permission).
        """
        self.ensure_ready()
        relative = f"{ROOT}/{key.path}"
        target = self.mount_path / relative
        partial = target.with_name(target.name + ".partial")
        digest = Digest()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb", buffering=CHUNK_SIZE) as out:
                for block in chunks:
                    out.write(digest.update(block))
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)
        except OSError as exc:
            raise StoreUnavailable(self.name, f"write of {target} failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return StoredObject(SCHEME + relative, digest.bytes_size, digest.sha256)

    def open_stream(self, physical_uri: str) -> BinaryIO:
        """Open the file for reading; `ResultMissing` if it is gone, `StoreUnavailable` if the
        mount cannot be read."""
        path = self._path(physical_uri)
        try:
            return open(path, "rb", buffering=CHUNK_SIZE)
        except FileNotFoundError as exc:
            if not self.mount_path.is_dir():
                raise StoreUnavailable(self.name, f"mount path {self.mount_path} is gone") from exc
            raise ResultMissing(f"{physical_uri}: file {path} does not exist") from exc
        except OSError as exc:
            raise StoreUnavailable(self.name, f"cannot open {path}: {exc}") from exc

    def delete(self, physical_uri: str) -> None:
        """Remove the file; a missing file is fine. `StoreUnavailable` on other OS errors."""
        path = self._path(physical_uri)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(self.name, f"cannot delete {path}: {exc}") from exc

    def delete_execution(self, execution_id: int) -> None:
        """Remove the execution's directory (with files of writes that never got a ref)."""
        folder = self.mount_path / ROOT / str(execution_id)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreUnavailable(self.name, f"cannot delete {folder}: {exc}") from exc

    def local_path(self, physical_uri: str) -> Path:
        """Where the object of `physical_uri` is on this host (readable in place by tools
        such as DuckDB). `ValueError` when the URI is not an fs URI."""
        return self._path(physical_uri)

    def _path(self, physical_uri: str) -> Path:
        if not physical_uri.startswith(SCHEME + ROOT + "/") or "/../" in physical_uri:
            raise ValueError(f"not an fs physical URI: {physical_uri!r}")
        return self.mount_path / physical_uri.removeprefix(SCHEME)

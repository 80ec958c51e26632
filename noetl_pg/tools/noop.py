"""`noop`: does nothing and returns `{}` (placeholders, joins, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from noetl_pg.tools.base import ToolContext


class NoopTool:
    kind: ClassVar[str] = "noop"
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        return {}

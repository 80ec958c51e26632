"""Load playbook YAML within bounds: alias expansion, nesting depth and step count capped.

PyYAML expands aliases while it builds Python objects, so a few hundred bytes of nested
aliases (a "billion laughs" document) become gigabytes; and its composer recurses once
per nesting level, so a deeply nested document ends in RecursionError. `load_bounded`
first reads the event stream (an iterative parser: no recursion, no objects built) and
measures the document as it would be once every alias is expanded: its nodes, its scalar
bytes and its depth. Only a document within the limits is composed and constructed, in
one pass that yields both the Python value and the node tree (dsl uses the nodes' line
numbers). Every refusal is a one-line PlaybookError naming the playbook and the limit.

Limits (noetl_pg.settings, read on every call):
- the expanded scalar bytes: NOETL_MAX_PLAYBOOK_BYTES (the same limit as the raw text,
  default 1 MiB, noetl_pg.dsl.max_playbook_bytes);
- NOETL_MAX_PLAYBOOK_NODES, default 200,000 nodes after expansion;
- NOETL_MAX_PLAYBOOK_DEPTH, default 64 levels of nesting;
- NOETL_MAX_PLAYBOOK_STEPS, default 10,000 steps in `workflow` (the routing plan is linear
  in the steps: each stores its arc targets; past the cap, one line names the limit).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from noetl_pg import settings
from noetl_pg.errors import PlaybookError

DEFAULT_MAX_BYTES = 1_048_576


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_nodes: int = field(default_factory=lambda: settings.current().max_playbook_nodes)
    max_depth: int = field(default_factory=lambda: settings.current().max_playbook_depth)
    max_steps: int = field(default_factory=lambda: settings.current().max_playbook_steps)


# libyaml's parser when PyYAML has it: the measuring pass then costs a fraction of the load.
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _Open:
    """A collection being measured: its expanded size so far and its anchor; for the top
    mapping, whether the next child is a key and the last key; for `workflow`, its steps."""

    anchor: str | None
    is_mapping: bool
    nodes: int = 1
    size: int = 0
    children: int = 0
    last_key: str | None = None
    is_workflow: bool = False


def measure(text: str, limits: Limits, playbook: str) -> None:
    """Refuse `text` when its expanded form breaks a limit; see `_measure`."""
    try:
        _measure(text, limits, playbook, _EVENT_LOADER)
    except yaml.YAMLError:
        # libyaml stops at errors (and at its own nesting limit) where the pure-Python
        # parser may get further: measure again with the parser the loader uses.
        if _EVENT_LOADER is not yaml.SafeLoader:
            with contextlib.suppress(yaml.YAMLError):
                _measure(text, limits, playbook, yaml.SafeLoader)


def _measure(text: str, limits: Limits, playbook: str, loader: type) -> None:
    """Measure with the event parser of `loader` (YAML errors propagate).

    Each node counts once where it appears and once more for every alias to it (an
    anchored collection counts with everything inside it), so the totals are those of the
    document PyYAML would build."""
    anchored: dict[str, tuple[int, int]] = {}
    stack: list[_Open] = []
    total_nodes = total_bytes = 0

    def add(nodes: int, size: int) -> None:
        nonlocal total_nodes, total_bytes
        total_nodes += nodes
        total_bytes += size
        if stack:
            stack[-1].nodes += nodes
            stack[-1].size += size
        if total_nodes > limits.max_nodes:
            raise PlaybookError(
                f"the document expands to more than {limits.max_nodes} YAML nodes "
                "(aliases included; NOETL_MAX_PLAYBOOK_NODES)", playbook=playbook)
        if total_bytes > limits.max_bytes:
            raise PlaybookError(
                f"the document expands to more than {limits.max_bytes} bytes of values "
                "(aliases included; NOETL_MAX_PLAYBOOK_BYTES)", playbook=playbook)

    def child(value: str | None) -> bool:
        """Count a child of the innermost collection; True when it starts `workflow`."""
        if not stack:
            return False
        parent = stack[-1]
        parent.children += 1
        if parent.is_workflow and parent.children > limits.max_steps:
            raise PlaybookError(
                f"the workflow has more than {limits.max_steps} steps "
                "(NOETL_MAX_PLAYBOOK_STEPS)", playbook=playbook, field="workflow")
        if len(stack) == 1 and parent.is_mapping:
            if parent.children % 2 == 1:
                parent.last_key = value
                return False
            return parent.last_key == "workflow"
        return False

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.ScalarEvent):
            child(event.value)
            size = len(event.value.encode("utf-8", "surrogatepass"))
            if event.anchor:
                anchored[event.anchor] = (1, size)
            add(1, size)
        elif isinstance(event, yaml.AliasEvent):
            child(None)
            if event.anchor not in anchored:
                # Undefined, or an alias inside its own anchor (a recursive structure).
                raise PlaybookError(
                    f"alias *{event.anchor} refers to no complete anchor (recursive "
                    "aliases are not allowed)", playbook=playbook)
            add(*anchored[event.anchor])
        elif isinstance(event, yaml.CollectionStartEvent):
            starts_workflow = child(None)
            add(1, 0)
            stack.append(_Open(event.anchor, isinstance(event, yaml.MappingStartEvent),
                               is_workflow=starts_workflow))
            if len(stack) > limits.max_depth:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise PlaybookError(
                    f"the document nests deeper than {limits.max_depth} levels "
                    "(NOETL_MAX_PLAYBOOK_DEPTH)", playbook=playbook, line=line)
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor:
                anchored[done.anchor] = (done.nodes, done.size)
            if stack:
                # Already in the totals; the parent's own size now includes it.
                stack[-1].nodes += done.nodes
                stack[-1].size += done.size


def text_bytes(text: str, *, playbook: str) -> int:
    """The UTF-8 size of `text`; PlaybookError when it holds a lone surrogate (which no
    file and no database text can carry), naming its line."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise PlaybookError("the text holds a lone surrogate (U+D800..U+DFFF), which is "
                            "not valid Unicode text", playbook=playbook, line=line) from None


def load_bounded(
    text: str, *, playbook: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Any, yaml.Node | None]:
    """(document, root node) of playbook YAML within the limits; see the module docstring.

    Raises PlaybookError for a limit, yaml.YAMLError for malformed YAML (from the pure-Python
    loader, as yaml.safe_load would).
    """
    limits = Limits(max_bytes=max_bytes)
    measure(text, limits, playbook)
    if _EVENT_LOADER is not yaml.SafeLoader:
        # libyaml composes faster (a 1,000-step playbook loads in 0.10 s, 0.33 s without);
        # what it refuses is loaded again by the pure-Python loader, whose error (or
        # document, where it is more lenient) is the one yaml.safe_load gives.
        with contextlib.suppress(yaml.YAMLError):
            return _compose(text, _EVENT_LOADER)
    return _compose(text, yaml.SafeLoader)


def _compose(text: str, loader_class: type) -> tuple[Any, yaml.Node | None]:
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return document, root

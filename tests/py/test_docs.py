"""Docs in the repo: every relative link in README.md and docs/*.md resolves to a file of the
repository (none reaches outside it), and docs/configuration.md is the page generated from
noetl_pg/settings.py."""

from __future__ import annotations

import re
from pathlib import Path

from noetl_pg import config_view, settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
VARIABLE = re.compile(r"NOETL_[A-Z0-9_]*[A-Z0-9]")


def _pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves_inside_the_repository() -> None:
    broken = []
    checked = 0
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            resolved = (page.parent / target.split("#")[0]).resolve()
            if REPO_ROOT not in resolved.parents or not resolved.exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert broken == []
    assert checked >= 8


def test_readme_links_the_docs() -> None:
    readme = REPO_ROOT / "README.md"
    linked = {(readme.parent / target).resolve() for target in LINK.findall(readme.read_text())}
    for name in ("dsl.md", "architecture.md", "operations.md", "configuration.md"):
        assert (REPO_ROOT / "docs" / name).resolve() in linked, name


def test_configuration_page_is_the_generated_one() -> None:
    """docs/configuration.md is what `noetl config docs` prints from noetl_pg/settings.py, so
    it names every declared variable with its default, and nothing else."""
    committed = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_view.page(), "run: noetl config docs > docs/configuration.md"
    declared = {settings.variable(name) for name in settings.Settings.model_fields}
    assert set(VARIABLE.findall(committed)) == declared

"""The web console in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A loop runs on the server's worker while the execution page is open: the progress bar
must advance through intermediate values and end full, with the final state shown.
Screenshots go to .cache/screenshots/ (docs/console-execution.png is one of them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from server_harness import REPO_ROOT, Server

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"]
SHOTS = REPO_ROOT / ".cache" / "screenshots"
ITEMS = 40

LOOP = f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: console_loop, path: PATH}}
workload:
  numbers: {list(range(ITEMS))}
workflow:
  - step: prepare
    tool: {{kind: noop}}
    next: {{arcs: [{{step: crunch}}]}}
  - step: crunch
    loop:
      in: "{{{{ workload.numbers }}}}"
      iterator: number
      spec: {{mode: parallel, max_in_flight: 2}}
    tool:
      kind: python
      input: {{number: "{{{{ number }}}}"}}
      code: |
        import time
        time.sleep(0.3)
        result = {{"square": number * number}}
    next: {{arcs: [{{step: report}}]}}
  - step: report
    tool:
      kind: python
      input: {{rows: "{{{{ crunch.results }}}}"}}
      code: "result = {{'total': sum(r['square'] for r in rows)}}"
"""

SLOW = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: console_slow, path: PATH}
workflow:
  - step: wait
    tool: {kind: python, code: "import time\\ntime.sleep(60)\\nresult = {}"}
"""


FAILING = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: console_failing, path: PATH}
workflow:
  - step: ok
    tool: {kind: noop}
    next: {arcs: [{step: boom}]}
  - step: boom
    tool:
      kind: python
      code: |
        print("fetching rows from upstream")
        raise ValueError("boom at step two")
"""


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    database = create_database("noetl_server_console")
    migrate(database)
    running = Server(database, worker_slots=2)
    yield running
    running.stop()
    drop_database(database)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: scripts/install_chromium.sh"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def start(server: Server, template: str) -> tuple[str, str]:
    path = f"tests/console/{uuid.uuid4().hex[:8]}"
    with server.client() as api:
        assert api.post("/api/catalog/register",
                        json={"content": template.replace("PATH", path)}).status_code == 200
        return path, api.post("/api/execute", json={"path": path}).json()["execution_id"]


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.errors = errors  # type: ignore[attr-defined]
    return page


def test_progress_bar_advances_to_the_final_state(server: Server, browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path, execution_id = start(server, LOOP)
    page = open_page(browser, f"{server.url}/console/execution.html?id={execution_id}")

    seen: list[int] = []
    mid_shot = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        bar = page.locator('.loop[data-step="crunch"]')
        if bar.count():
            done = int(bar.get_attribute("data-done") or 0)
            assert int(bar.get_attribute("data-total") or 0) == ITEMS
            if not seen or seen[-1] != done:
                seen.append(done)
            if 0 < done < ITEMS and not mid_shot:
                page.screenshot(path=SHOTS / "console-execution-running.png")
                mid_shot = True
        if page.locator("#exec-status").get_attribute("data-status") == "COMPLETED" \
                and seen and seen[-1] == ITEMS:
            break
        time.sleep(0.2)
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    intermediate = [done for done in seen if 0 < done < ITEMS]
    assert len(intermediate) >= 2, f"bar did not advance in steps: {seen}"
    assert seen[-1] == ITEMS
    assert page.locator("#exec-status").get_attribute("data-status") == "COMPLETED"
    assert "40 done, 0 failed of 40" in page.locator('.loop[data-step="crunch"]').inner_text()

    # The graph shows every step done, the step table and the newest events.
    page.wait_for_function("document.querySelectorAll('#graph g.node[data-status=done]')"
                           ".length === 3", timeout=20_000)
    assert page.locator("#steps tbody tr").count() == 3
    # The event table is read again when the projected event count moves, which can be a
    # poll after the graph shows the last step done: wait for it, then read it.
    page.wait_for_function("(document.querySelector('#events tbody tr') || {}).innerText"
                           "?.includes('playbook.completed')", timeout=20_000)
    first_event = page.locator("#events tbody tr").first.inner_text()
    assert "playbook.completed" in first_event
    page.screenshot(path=SHOTS / "console-execution.png", full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]

    listing = open_page(browser, f"{server.url}/console/?path={path}")
    listing.wait_for_selector(f'#executions tr[data-id="{execution_id}"]')
    row = listing.locator(f'#executions tr[data-id="{execution_id}"]').inner_text()
    assert "COMPLETED" in row and "100%" in row
    listing.screenshot(path=SHOTS / "console-executions.png", full_page=True)
    listing.close()
    page.close()


def test_cancel_button_and_failed_filter(server: Server, browser: Browser) -> None:
    _, execution_id = start(server, SLOW)
    page = open_page(browser, f"{server.url}/console/execution.html?id={execution_id}")
    page.wait_for_selector("#cancel:not([hidden])", timeout=20_000)
    page.click("#cancel")
    page.wait_for_selector('#exec-status[data-status="CANCELLED"]', timeout=20_000)
    with psycopg.connect(server.dsn) as conn:
        stored = conn.execute("select status, error from noetl.execution "
                              "where execution_id = %s", (int(execution_id),)).fetchone()
    assert stored == ("CANCELLED", "cancelled from the console")
    assert page.locator("#cancel").is_hidden()

    listing = open_page(browser, f"{server.url}/console/?status=CANCELLED")
    listing.wait_for_selector(f'#executions tr[data-id="{execution_id}"]')
    statuses = listing.locator("#executions td.status").all_inner_texts()
    assert statuses and set(statuses) == {"CANCELLED"}
    listing.close()
    page.close()


def test_failed_step_shows_error_and_logs(server: Server, browser: Browser) -> None:
    _, execution_id = start(server, FAILING)
    page = open_page(browser, f"{server.url}/console/execution.html?id={execution_id}")
    page.wait_for_selector('#exec-status[data-status="FAILED"]', timeout=60_000)
    page.wait_for_selector("#log-stdout", timeout=20_000)
    assert "boom at step two" in page.locator("#error-text").inner_text()
    assert "Failed step: boom" in page.locator("#failure h2").inner_text()
    assert page.locator("#log-stdout").inner_text().strip() == "fetching rows from upstream"
    assert "Traceback" in page.locator("#log-stderr").inner_text()
    page.wait_for_selector('#graph g.node[data-step="boom"][data-status="failed"]')
    page.screenshot(path=SHOTS / "console-failed.png", full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]
    page.close()

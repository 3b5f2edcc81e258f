"""Browser-test fixtures: a real node subprocess and Debian's chromium driven by Playwright.

Playwright's own browser downloads are never used (`playwright install` is not run anywhere):
the tests launch /usr/bin/chromium, which .ci/run installs with apt. Without it they skip.
When a test fails, every page it still has open is saved as a screenshot, with that page's
console output, under test-artifacts/ (gitignored) so CI failures can be looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.helpers import ROOT, NodeProcess

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 720}
TIMEOUT_MS = 20_000
CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed


class Person:
    """One person's browser profile (a context: its own localStorage) and the pages it opens."""

    def __init__(self, name: str, context: BrowserContext, url: str) -> None:
        self.name = name
        self.context = context
        self.url = url
        self.console: list[str] = []
        self.errors: list[str] = []

    def open(self) -> Page:
        page = self.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.goto(self.url + "/")
        return page

    def _on_console(self, msg: ConsoleMessage) -> None:
        line = f"{msg.type}: {msg.text} ({msg.location.get('url')})"
        self.console.append(line)
        if msg.type == "error":
            self.errors.append(line)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path / "node") as proc:
        yield proc


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """Screenshots and other files a person may want to look at after the run (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def person(
    browser: Browser, node: NodeProcess, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Person]]:
    """`person("alice")`: a fresh browser profile pointed at the node."""
    people: list[Person] = []

    def make(name: str) -> Person:
        people.append(Person(name, browser.new_context(viewport=VIEWPORT), node.url))
        return people[-1]

    yield make
    failed = request.node.stash.get(CALL_FAILED, False)
    for p in people:
        if failed:
            stem = f"failed-{request.node.name}-{p.name}"
            for i, page in enumerate(p.context.pages):
                page.screenshot(path=str(artifacts / f"{stem}-{i}.png"))
            (artifacts / f"{stem}.console.log").write_text("\n".join(p.console) + "\n")
        p.context.close()

"""Headless Chromium for tests: find it, dump a page's DOM after its scripts ran, screenshot it.

Debian's `chromium` package (`scripts/setup_browser.sh` installs it where CI runs as root).
`--virtual-time-budget` lets the page's timers and fetches run for that many virtual ms
before the DOM is dumped or the picture taken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str:
    """The browser's path; a skip (or, with ENSERVE_REQUIRE_BROWSER=1 as in CI, a failure)
    when there is none."""
    found = os.environ.get("ENSERVE_CHROMIUM") or next(filter(None, map(shutil.which, CANDIDATES)), None)
    if found:
        return found
    message = "no Chromium found (install Debian's 'chromium', or run scripts/setup_browser.sh as root)"
    if os.environ.get("ENSERVE_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _run(browser: str, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="enserve-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
                   f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(browser: str, url: str, budget_ms: int = 4000) -> str:
    result = _run(browser, f"--virtual-time-budget={budget_ms}", "--dump-dom", url)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


def screenshot(browser: str, url: str, path: Path, size: tuple[int, int] = (1400, 1300),
               budget_ms: int = 4000) -> Path:
    result = _run(browser, f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                  f"--screenshot={path}", url)
    assert result.returncode == 0 and path.is_file(), result.stderr[-2000:]
    return path


class _Keys(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._open: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("data-key")
        if found:
            self._open.append((tag, found))
            self.values[found] = ""
            self.attrs[found] = dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, found in self._open:
            self.values[found] += data


def keyed_text(html: str) -> tuple[dict[str, str], dict[str, dict[str, str | None]]]:
    """The text (and attributes) of every element carrying `data-key`, by key."""
    parser = _Keys()
    parser.feed(html)
    return {k: v.strip() for k, v in parser.values.items()}, parser.attrs

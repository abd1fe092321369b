"""report.html in a real browser (issue 12): Debian's Chromium, headless.

The demo sweep's page is dumped as DOM, screenshotted and printed to PDF. Without `chromium`
the tests skip, unless REQUIRE_BROWSER=1 (set by .ci/run, which installs it): then they fail.
The screenshot is kept in the test's tmp_path and, with REPORT_SCREENSHOT_DIR, there as well.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from spec_ids import AUTOMATED
from test_html import TITLE, demo_document, render

pytestmark = pytest.mark.browser

# Flags that work as root on this closed network: without the background-networking ones,
# Chromium's own connections (updates, sync, field trials) are refused and slow it down.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """Debian's Chromium (/usr/bin/chromium), or skip; or fail under REQUIRE_BROWSER=1."""
    found = shutil.which("chromium")
    if found:
        return found
    message = "chromium not found (apt-get install -y chromium); .ci/run installs it"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1: {message}")
    pytest.skip(message)


@dataclass(frozen=True)
class Browser:
    binary: str
    work: Path

    def run(self, page: Path, *args: str) -> str:
        """One headless Chromium run with a fresh profile; its stdout."""
        profile = self.work / f"profile-{len(list(self.work.glob('profile-*')))}"
        done = subprocess.run(
            [self.binary, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return Browser(chromium(), tmp_path_factory.mktemp("chromium"))


@pytest.fixture(scope="module")
def listed() -> int:
    counts = demo_document()["counts"]
    return int(counts["candidate"] + counts["potential-candidate"])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render(demo_document()), encoding="utf-8")
    return path


def test_the_dumped_dom_has_the_chart_bars_and_one_row_per_listed_patient(browser, page, listed):
    """Chromium parses the page into the expected DOM: 1 + 2 x criteria bars, one row each."""
    dom = browser.run(page, "--dump-dom")
    assert f"<title>{TITLE}</title>" in dom
    bars = re.findall(r'<rect class="bar (bar-cohort|bar-remaining|bar-unknown)"', dom)
    assert len(bars) == 1 + 2 * len(AUTOMATED)
    assert len(re.findall(r'<tr class="patient-row"', dom)) == listed
    assert len(re.findall(r'<section class="patient"', dom)) == listed


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_the_page_lays_out_in_a_screenshot(browser, page, tmp_path):
    """A screenshot of the top of the page: summary, chart and the start of the table."""
    shot = tmp_path / "report.png"
    browser.run(page, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}")
    png = shot.read_bytes()
    assert _png_size(png) == (1280, 2400)
    assert len(png) > 50_000  # a blank or unstyled page compresses to far less
    if folder := os.environ.get("REPORT_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / "report.png")


def test_the_page_prints_to_pdf_with_a_page_per_patient(browser, page, listed, tmp_path):
    """Print CSS starts each patient's section on a new page."""
    pdf = tmp_path / "report.pdf"
    browser.run(page, "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    assert pages > listed

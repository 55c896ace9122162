"""The Prefect UI's custom-run form of the daily deployment, rendered by headless Chromium.

Checks the rendered DOM (not the API schema): a date input for run_date and one section per
parameter group. The screenshot is left at $LED_UI_SCREENSHOT (default: the test's tmp dir).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_runner import led
from tests.prefect_api import deployment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.stack, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")]


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,2400", "--force-prefers-reduced-motion",
                           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=30000", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_custom_run_form_renders_a_date_picker_and_the_groups(local_stack, tmp_path):
    code, res, log = led("deploy")
    assert code == 0, log[-2000:]
    dep = deployment(local_stack)
    ui = local_stack.prefect_api_url.removesuffix("/api")
    url = f"{ui}/deployments/deployment/{dep['id']}/run"
    shot = Path(os.environ.get("LED_UI_SCREENSHOT", tmp_path / "custom-run.png"))
    done = chromium(f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    dom = chromium("--dump-dom", url).stdout
    (tmp_path / "custom-run.html").write_text(dom)
    assert 'type="date"' in dom or "date-picker" in dom.lower() or "p-date-input" in dom, dom[-3000:]
    # one section per stage group (titled by the parameter), each knob with its own input
    for label in ("data (Optional)", "pretrain (Optional)", "fine_tune (Optional)", "index (Optional)",
                  "gate (Optional)", "Events Dir", "Dim", "Loss", "N Trees", "Gate Tolerance"):
        assert label in dom, label
    assert "Property is type" not in dom  # the T/None union toggle the UI draws for `anyOf [T, null]`

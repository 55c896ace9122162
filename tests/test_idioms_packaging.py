"""Packaging: `pip install .[serve]` in a fresh virtualenv gives a working `led serve` without the
training stack (no TensorFlow, Spark, MLflow or Prefect installed, let alone imported)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    """``"moto[server]>=5.1,<6"`` -> ``"moto"`` (normalised as pip does: lower case, ``_`` = ``-``)."""
    for sep in "[<>=!~; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("_", "-")
HEAVY = ("tensorflow", "pyspark", "mlflow", "prefect", "great_expectations", "pandas")


def test_dependencies_are_declared_and_the_pins_stay_in_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"serve", "pipeline", "dev"} <= set(extras)
    pinned = [d for d in project["dependencies"] + sum(extras.values(), []) if "==" in d]
    assert not pinned, pinned  # exact versions live in requirements.lock only
    names = {name(d) for d in project["dependencies"] + extras["serve"]}
    assert not names & {"tensorflow-cpu", "tensorflow", "pyspark", "mlflow", "prefect"}, names
    lock = {name(line) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    declared = {name(d) for d in sum(extras.values(), project["dependencies"]) if name(d) != "led-pipeline"}
    assert declared <= lock, declared - lock  # every declared package has a pin


@pytest.mark.slow
def test_serve_extra_in_a_fresh_venv(tmp_path):
    # a copy of the sources: pip builds in the tree (build/, *.egg-info) and must not write the worktree
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", ".led", "__pycache__", "benchmarks", "tests", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              f"{source}[serve]"], capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-3000:]
    helped = subprocess.run([str(venv / "bin" / "led"), "serve", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "--port" in helped.stdout, helped.stderr[-2000:]
    probe = ("import importlib.util, json, sys; import serving.app, cli.commands.serve; "
             f"print(json.dumps({{'installed': [m for m in {HEAVY!r} if importlib.util.find_spec(m)], "
             f"'imported': [m for m in {HEAVY!r} if m in sys.modules]}}))")
    seen = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert seen.returncode == 0, seen.stderr[-2000:]
    assert json.loads(seen.stdout.strip().splitlines()[-1]) == {"installed": [], "imported": []}

"""The rooms of the house and their import order (docs/architecture.md, "Rooms").

A module may import only from its own room or a lower one. The test reads every
module's imports with ``ast`` (including those inside functions, which run
later but are dependencies all the same) and fails on an arrow that runs back up.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first; rooms on one line are peers and may not import each other
ORDER = [("infra",), ("models",), ("data_sources", "data_checks"), ("serving",), ("tasks",), ("flows",), ("cli",)]
RANK = {room: level for level, rooms in enumerate(ORDER) for room in rooms}
# serving runs in a slim process: of ``models`` it may use only the numpy-only modules
SERVING_MAY_USE = {"models.export", "models.scoring", "models.metrics"}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for room, level in RANK.items():
        for path in sorted((root / room).rglob("*.py")):
            for line, module in imports(path):
                target = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line} imports {module}"
                if target in RANK and target != room and RANK[target] >= level:
                    found.append(where)
                slim = any(module == m or module.startswith(m + ".") for m in SERVING_MAY_USE)
                if room == "serving" and target == "models" and not slim:
                    found.append(where + " (serving may use only numpy-only models modules)")
    return found


def test_no_room_imports_a_higher_or_peer_room():
    assert violations() == []


def test_the_check_catches_arrows_running_back_up(tmp_path):
    """The checker itself, on a planted tree: upward, peer and slim-serving violations are reported."""
    files = {"infra/a.py": "def f():\n    from models.led import LedConfig\n",
             "data_checks/b.py": "import data_sources.synthetic\n",
             "serving/c.py": "from models import scoring\nfrom models.data import Lists\n",
             "cli/d.py": "from flows.daily import daily\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "infra/a.py:2 imports models.led.LedConfig",
        "data_checks/b.py:1 imports data_sources.synthetic",
        "serving/c.py:2 imports models.data.Lists (serving may use only numpy-only models modules)",
    ]

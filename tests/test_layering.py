"""The package's floors (docs/design.md): a module imports its own room, or rooms on lower
floors; kernels import nothing of lingjax but lingjax.kernels; nothing inside the package
imports the notebook front door `lingjax.api`; no two rooms import each other.

Every import counts, function-local ones included (`from lingjax import x` counts as importing
`lingjax.x`). Run `python -m pytest tests/test_layering.py -q` after moving code between rooms.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

PACKAGE = "lingjax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. Rooms on one floor may import each other but not in a circle.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("configs",),
    ("kernels",),
    ("parallel",),
    ("model",),
    ("data",),
    ("checkpoint",),
    ("merge",),
    ("evaluate",),
    ("train",),
    ("posttrain",),
    ("scaling", "studies"),
    ("api", "cli", "__init__"),
)
FLOOR_OF = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def room_of(module: str) -> str:
    """'lingjax.model.moe' -> 'model'; 'lingjax.api' -> 'api'; 'lingjax' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported lingjax module) for every import in the file, at any depth."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE:  # `from lingjax import x` imports lingjax.x
                out += [(node.lineno, f"{PACKAGE}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(line, m) for line, m in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def violations(root: pathlib.Path) -> list[str]:
    """Every broken rule in the package at `root`, one readable line each."""
    problems: list[str] = []
    edges: dict[tuple[str, str], str] = {}  # (room, imported room) -> where, same floor only
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        room = room_of(module)
        where = path.relative_to(root.parent)
        if room not in FLOOR_OF:
            problems.append(f"{where}: room {room!r} is on no floor; add it to FLOORS")
            continue
        for line, target in imports_of(path, root):
            other = room_of(target)
            at = f"{where}:{line} imports {target}"
            if other == room:
                continue
            if other not in FLOOR_OF:
                problems.append(f"{at}: room {other!r} is on no floor")
            elif other == "api" and room != "__init__":
                problems.append(f"{at}: lingjax.api is the notebook front door, for users only")
            elif room == "kernels":
                problems.append(f"{at}: kernels import nothing of lingjax but lingjax.kernels")
            elif FLOOR_OF[other] > FLOOR_OF[room]:
                problems.append(
                    f"{at}: upward, {room} (floor {FLOOR_OF[room]}) -> {other} "
                    f"(floor {FLOOR_OF[other]})"
                )
            elif FLOOR_OF[other] == FLOOR_OF[room]:
                edges.setdefault((room, other), at)
    for (a, b), at in sorted(edges.items()):
        if (b, a) in edges and a < b:
            problems.append(f"circle between rooms {a} and {b}: {at}; {edges[(b, a)]}")
    return problems


def test_the_package_keeps_its_floors():
    problems = violations(ROOT)
    assert not problems, "layering broken:\n  " + "\n  ".join(problems)


def _plant(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        (  # an upward import hidden in a function, as the floors issue found them
            {
                "parallel/__init__.py": "",
                "parallel/sharding.py": "def f():\n    from lingjax.train import state\n",
                "train/__init__.py": "",
            },
            "upward, parallel (floor 2) -> train (floor 8)",
        ),
        (  # `from lingjax import x` is an import of lingjax.x
            {"model/__init__.py": "from lingjax import checkpoint\n", "checkpoint/__init__.py": ""},
            "upward, model (floor 3) -> checkpoint (floor 5)",
        ),
        (  # relative imports resolve against the package
            {"configs/__init__.py": "from ..model import moe\n", "model/moe.py": ""},
            "upward, configs (floor 0) -> model (floor 3)",
        ),
        (
            {"checkpoint/hf.py": "import lingjax.api\n", "api.py": ""},
            "lingjax.api is the notebook front door",
        ),
        (
            {"kernels/gmm.py": "from lingjax.configs import base\n", "configs/base.py": ""},
            "kernels import nothing of lingjax",
        ),
        (
            {
                "scaling/a.py": "import lingjax.studies.b\n",
                "studies/b.py": "import lingjax.scaling.a\n",
            },
            "circle between rooms scaling and studies",
        ),
        ({"extras/x.py": ""}, "room 'extras' is on no floor"),
    ],
)
def test_the_checker_catches_planted_breaks(tmp_path, files, expected):
    problems = violations(_plant(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_the_checker_allows_downward_and_same_room_imports(tmp_path):
    root = _plant(
        tmp_path,
        {
            "train/loop.py": "from lingjax.model import moe\nfrom lingjax.train import step\n",
            "train/step.py": "from . import loop\nimport lingjax.configs.base\n",
            "model/moe.py": "from lingjax.kernels.gmm import api\n",
            "__init__.py": "def __getattr__(n):\n    from lingjax import api\n",
            "api.py": "",
        },
    )
    assert violations(root) == []

"""The rooms and their one-way imports (DESIGN.md): runtime <- sim <- lab; services and robotclient apart.

Every ``import`` in the source, at module level or inside a function, is read with ``ast``: a lazy import
still ties the rooms together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_files(package: str) -> list[Path]:
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


# (room, modules it must not import)
RULES = [
    ("robotclient.runtime", ("robotclient.sim", "robotclient.lab", "services")),
    ("robotclient.sim", ("robotclient.lab", "services")),
    ("services", ("robotclient",)),
    ("services.yolodetection.modeltools", (
        "services.yolodetection.detector", "services.yolodetection.engines", "services.yolodetection.engine_choice",
        "services.yolodetection.reference", "services.yolodetection.batching")),
]


@pytest.mark.parametrize(("room", "forbidden"), RULES, ids=[r for r, _ in RULES])
def test_a_room_imports_only_what_is_below_it(room: str, forbidden: tuple[str, ...]) -> None:
    files = module_files(room)
    assert files, f"no modules in {room}"
    crossings = [f"{path.relative_to(REPO)} imports {name}" for path in files for name in sorted(imports_of(path))
                 if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not crossings, "\n".join(crossings)


def test_the_rooms_hold_their_modules() -> None:
    def names(package: str) -> set[str]:
        return {p.stem for p in (REPO / package.replace(".", "/")).glob("*.py")} - {"__init__"}

    assert {"offload", "session", "tracker", "statemachine", "controller", "sources", "replay", "runner"} <= names(
        "robotclient.runtime")
    assert {"scenario", "world", "robot"} <= names("robotclient.sim")
    assert {"experiment", "envoyconf", "envoyproc", "netem", "localmesh"} <= names("robotclient.lab")
    assert {"model", "darknet", "convert", "quantize"} <= names("services.yolodetection.modeltools")

"""The floors of the package (docs/architecture.md): every import points to the same floor or a lower one, and no
module imports itself through others. Read from the source (every import, those inside functions too), so a
change that runs an arrow back up fails here with the two modules named."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "czii_kit"

# floor -> top-level parts of czii_kit on it (a package counts as one part); docs/architecture.md says why
FLOORS = {
    0: ("czii_kit", "errors", "particles", "utils"),
    1: ("tables", "config", "tuning"),
    2: ("data", "metric", "submission", "post", "models", "losses", "viz", "yolo"),
    3: ("checkpoints", "infer"),
    4: ("train", "evaluate", "predict", "baseline"),
    5: ("study", "pretrain", "kaggle", "bench", "selfcheck", "scale"),
    6: ("cli",),
}
FLOOR_OF = {part: floor for floor, parts in FLOORS.items() for part in parts}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("czii_kit", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """czii_kit modules ``path`` imports (``from pkg import submodule`` counts as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "czii_kit":
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "czii_kit"}
    return found


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def test_every_part_of_the_package_has_a_floor(graph):
    missing = sorted({part(m) for m in graph} - set(FLOOR_OF))
    assert not missing, f"give {missing} a floor in FLOORS (and in docs/architecture.md)"


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (floor {FLOOR_OF[part(a)]}) imports {b} (floor {FLOOR_OF[part(b)]})"
            for a, targets in sorted(graph.items()) for b in sorted(targets)
            if FLOOR_OF[part(b)] > FLOOR_OF[part(a)]]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_runs_up_a_floor(graph):
    arrows = upward_arrows(graph)
    assert not arrows, "\n".join(arrows)


def test_no_module_imports_itself_through_others(graph):
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_checks_see_a_planted_upward_arrow_and_a_planted_cycle():
    planted = {"czii_kit.tables": {"czii_kit.infer.plan"}, "czii_kit.infer.plan": {"czii_kit.infer.kinds"},
               "czii_kit.infer.kinds": {"czii_kit.infer.plan"}}
    assert upward_arrows(planted) == ["czii_kit.tables (floor 1) imports czii_kit.infer.plan (floor 3)"]
    assert cycles(planted) == [["czii_kit.infer.kinds", "czii_kit.infer.plan"]]

"""The house by stages: imports run only downwards, never in a circle, never to Streamlit.

Every ``import`` and ``from ... import`` in ``scalpnet/`` is read with ``ast``, those
inside functions included (a lazy import is still an arrow between two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scalpnet"
MAX_LINES = 500  # the house rule: a module reads as one idea and stays under about 500 lines

# The stages, in the order the data travels; a module may import its own stage and below.
STAGES = {
    "scalpnet.labels": 0,
    "scalpnet.errors": 0,
    "scalpnet.files": 0,
    "scalpnet.quiet": 0,
    "scalpnet.cpu_kernels": 0,
    "scalpnet.import_hooks": 0,
    "scalpnet.progress": 0,
    "scalpnet.data": 1,
    "scalpnet.learn": 2,
    "scalpnet.judge": 3,
    "scalpnet.serve": 4,
    "scalpnet.app": 5,
    "scalpnet.cli": 6,
    "scalpnet.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> int | None:
    """The stage of a module: its longest prefix in STAGES (None: the package itself)."""
    best = None
    for prefix, rank in STAGES.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, rank)
    return None if best is None else best[1]


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The scalpnet modules (and other top-level packages) one file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {
        name: {m for m in imports_of(path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_every_module_has_a_stage():
    unstaged = [m for m in all_modules() if m != "scalpnet" and stage(m) is None]
    assert not unstaged, f"modules outside every stage (add them to STAGES): {unstaged}"


def test_no_import_runs_up_a_stage():
    upward = [
        f"{src} (stage {stage(src)}) imports {dst} (stage {stage(dst)})"
        for src, targets in graph().items()
        for dst in targets
        if src != "scalpnet" and stage(dst) is not None and stage(dst) > stage(src)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search)."""
    colour: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_circle():
    # The control: the check above would fail on a circle like the old dedupe <-> prepare.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_stages_of_planted_modules():
    assert stage("scalpnet.data.prepare") < stage("scalpnet.learn.training")
    assert stage("scalpnet.serve.advisor") < stage("scalpnet.app.state")
    assert stage("scalpnet") is None


def test_no_streamlit_inside_the_package():
    modules = all_modules()
    users = [
        name
        for name, path in modules.items()
        if any(m.split(".")[0] == "streamlit" for m in imports_of(path, modules))
    ]
    assert not users, f"streamlit imported inside scalpnet/: {users}"


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_modules_stay_small(name):
    lines = all_modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it along its seams"

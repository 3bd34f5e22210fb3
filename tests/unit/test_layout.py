"""The dependency rules, read from every Python file's imports (the `ast`
module), wherever the import statement sits (docs/design.md §2):

- `pipeline/` imports neither `actors/` nor `learner/`; `actors/` and `learner/` never import each
  other. (`run.py`, `benchmarks/`, `experiments/` and `tests/` may import both sides.)
- Inside `learner/`, the rooms import downwards only: `training/` (the algorithm and the optimiser)
  imports no other room; `observe/` only `training/` (for the types it records); `weights/` and
  `orchestration/` import `training/` and `observe/`, never each other. The loop and its builder, at the top of
  `learner/`, wire them all; no room imports them.
- No import circles: no two modules of `pipeline/`, `actors/` or `learner/` import each other,
  directly or round a ring."""

import ast
from pathlib import Path

from tests.conftest import ROOT

FORBIDDEN = {"pipeline": {"actors", "learner", "benchmarks", "experiments"},
             "actors": {"learner", "benchmarks", "experiments"}, "learner": {"actors", "benchmarks", "experiments"}}
# room -> the rooms it may import (itself included)
ROOMS = {"training": {"training"}, "observe": {"observe", "training"}, "weights": {"weights", "observe", "training"},
         "orchestration": {"orchestration", "training", "observe"}}
TOP = {"loop", "build", "session"}  # learner/'s own modules: they wire the rooms


def imported_modules(path: Path) -> set[str]:
    """The dotted name of every import in the file (`from a.b import c` gives a.b.c and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    return out


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in the file."""
    return {name.split(".")[0] for name in imported_modules(path)}


def room_crossings(root: Path) -> list[str]:
    """Imports inside learner/ that break the rooms' order."""
    found = []
    for room, allowed in ROOMS.items():
        for path in sorted((root / "learner" / room).rglob("*.py")):
            for name in sorted(imported_modules(path)):
                parts = name.split(".")
                if parts[0] != "learner" or len(parts) < 2:
                    continue
                target = parts[1]
                if target in TOP or (target in ROOMS and target not in allowed):
                    found.append(f"{path.relative_to(root)} imports {'.'.join(parts[:2])}")
    return sorted(set(found))


def crossings(root: Path) -> list[str]:
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for bad in sorted(imported_packages(path) & banned):
                found.append(f"{path.relative_to(root)} imports {bad}")
    return found


def test_no_package_imports_across_the_dependency_rule():
    assert crossings(ROOT) == []


def test_the_learners_rooms_import_downwards_only():
    assert room_crossings(ROOT) == []
    assert {p.name for p in (ROOT / "learner").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ROOMS)


def test_the_room_check_catches_an_upward_import(tmp_path):
    for room in ROOMS:
        (tmp_path / "learner" / room).mkdir(parents=True)
    (tmp_path / "learner" / "training" / "a.py").write_text("from learner.orchestration.leases import LeaseBook\n")
    (tmp_path / "learner" / "weights" / "b.py").write_text("def f():\n    import learner.loop\n")
    (tmp_path / "learner" / "observe" / "c.py").write_text("from learner.training import checkpoint\n")
    assert room_crossings(tmp_path) == ["learner/training/a.py imports learner.orchestration",
                                        "learner/weights/b.py imports learner.loop"]


def test_the_check_catches_an_import_inside_a_function(tmp_path):
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "x.py").write_text("def f():\n    from actors.engine import Engine\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "y.py").write_text("import learner.loop\n")
    (tmp_path / "actors").mkdir()
    assert crossings(tmp_path) == ["pipeline/y.py imports learner", "learner/x.py imports actors"]


def import_graph(root: Path, packages=("pipeline", "actors", "learner")) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file, inside functions too); `from
    a.b import c` counts as importing a.b.c where that is a module, else a.b."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):  # not its own package
                targets.add(imported)
        graph[name] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circles():
    """No two modules import each other, directly or round a ring, not even inside a function: each
    part can be read (and changed) from the bottom up."""
    assert import_circles(import_graph(ROOT)) == []


def test_the_circle_check_catches_a_ring_through_a_function(tmp_path):
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "a.py").write_text("from learner.b import f\n")
    (tmp_path / "learner" / "b.py").write_text("def f():\n    from learner.a import g\n")
    (tmp_path / "learner" / "c.py").write_text("import learner.a\n")
    assert import_circles(import_graph(tmp_path, packages=("learner",))) == [["learner.a", "learner.b"]]


STATS_WRITERS = {"learner/loop.py", "learner/build.py"}  # the loop writes the run's statistics; build() makes them


def stats_users(root: Path) -> list[str]:
    """Modules of learner/, outside observe/ and the loop and its builder, that import the run
    statistics (learner/observe/stats.py), and so could write them or decide from them."""
    return sorted(str(p.relative_to(root)) for p in (root / "learner").rglob("*.py")
                  if str(p.relative_to(root)) not in STATS_WRITERS and p.parent.name != "observe"
                  and any(m.startswith("learner.observe.stats") for m in imported_modules(p)))


def test_statistics_have_one_writer_and_no_room_reads_them():
    """docs/design.md §3, "Statistics only observe": each owner reports what happened (a verdict, a
    probe check, a finished step) and the loop records it; nothing in control reads the figures."""
    assert stats_users(ROOT) == []


def test_the_statistics_check_catches_a_room_that_imports_them(tmp_path):
    (tmp_path / "learner" / "weights").mkdir(parents=True)
    (tmp_path / "learner" / "weights" / "publisher.py").write_text("from learner.observe.stats import RunStats\n")
    (tmp_path / "learner" / "loop.py").write_text("from learner.observe.stats import RunStats\n")
    assert stats_users(tmp_path) == ["learner/weights/publisher.py"]

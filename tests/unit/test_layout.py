"""The dependency rule of DESIGN.md §2, read from every Python file's imports (the `ast` module):
`pipeline/` imports neither `actors/` nor `learner/`; `actors/` and `learner/` never import each
other, not even inside a function. (`run.py`, `benchmarks/` and `tests/` may import both sides.)"""

import ast
from pathlib import Path

from tests.conftest import ROOT

FORBIDDEN = {"pipeline": {"actors", "learner", "benchmarks"}, "actors": {"learner", "benchmarks"},
             "learner": {"actors", "benchmarks"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in the file, wherever the import statement sits."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value.split(".")[0])
    return out


def crossings(root: Path) -> list[str]:
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for bad in sorted(imported_packages(path) & banned):
                found.append(f"{path.relative_to(root)} imports {bad}")
    return found


def test_no_package_imports_across_the_dependency_rule():
    assert crossings(ROOT) == []


def test_the_check_catches_an_import_inside_a_function(tmp_path):
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "x.py").write_text("def f():\n    from actors.engine import Engine\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "y.py").write_text("import learner.loop\n")
    (tmp_path / "actors").mkdir()
    assert crossings(tmp_path) == ["pipeline/y.py imports learner", "learner/x.py imports actors"]

"""The documentation a newcomer follows: every path, command and make target README names exists;
code cites only documents in the repository, and each cited section is there."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

README = (ROOT / "README.md").read_text()
# paths a reader makes or brings (run folders, their own models and data), not the repository's
NOT_OURS = ("runs/", "/models/", "my_problems.jsonl", "my.toml", "../shared/data", "generator-0.log", "checkpoints/",
            "wandb/")
SOURCES = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".toml", ".md", ".sbatch", ".cfg"}
           and not {".venv", ".venv-gpu", ".git", "runs", "wandb", "__pycache__"} & set(p.parts)] + [ROOT / "Makefile"]


def named_paths(text: str) -> set[str]:
    """Repository paths a text names: in links, or in backticks and code, by their look."""
    found = set(re.findall(r"\]\(([^)#\s]+)\)", text))
    found |= set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*\.(?:py|toml|md|sbatch)|(?:[\w.-]+/)+)(?![\w/])", text))
    return {p for p in found if not p.startswith(("http", "--")) and not any(n in p for n in NOT_OURS)}


def test_every_path_readme_names_exists():
    missing = sorted(p for p in named_paths(README) if not (ROOT / p).exists())
    assert missing == []
    assert {"docs/design.md", "docs/algorithms.md", "docs/gpu.md", "docs/configuration.md",
            "docs/results.md"} <= named_paths(README)


def test_every_command_and_make_target_readme_names_exists():
    commands = set(re.findall(r"run\.py (\w+)", README))
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True).stdout
    listed = set(re.search(r"\{([\w,]+)\}", out).group(1).split(","))
    assert commands and commands <= listed, commands - listed
    targets = set(re.findall(r"make ([\w-]+)", README))
    defined = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert targets and targets <= defined, targets - defined


def test_readme_is_a_guide_not_a_notebook():
    assert len(README.splitlines()) <= 260


def test_no_file_cites_a_document_outside_the_repository():
    bad = re.compile(r"DESIGN\.md|ALGORITHMS\.md|\.\./shared(?!/data)|shared/(?:DESIGN|ALGORITHMS)")
    assert [str(p.relative_to(ROOT)) for p in SOURCES if p.name != "test_docs.py" and bad.search(p.read_text())] == []


def test_every_section_cited_in_the_docs_is_there():
    cited = {(doc, sec) for p in SOURCES for doc, sec in re.findall(r"docs/(\w+)\.md §(\d)", p.read_text())}
    assert cited
    missing = [f"docs/{doc}.md §{sec}" for doc, sec in sorted(cited)
               if not re.search(rf"^## {sec}\.", (ROOT / "docs" / f"{doc}.md").read_text(), flags=re.M)]
    assert missing == []


def test_the_path_finder_sees_what_a_reader_sees():
    text = "see [gpu](docs/gpu.md), `learner/loop.py`, configs/gpu/, `runs/x/y.json`, and --data.source"
    assert named_paths(text) == {"docs/gpu.md", "learner/loop.py", "configs/gpu/"}

"""docs/extending.md's recipes, run: each Python block of the page in a namespace of its own, with
`tmp_path` a fresh folder. What a block registers at run time (a correction in `CORRECTIONS`) is
taken out again afterwards, so no test sees another's extension."""

import re

import pytest

from learner.training import loss
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "extending.md"


def recipes() -> dict[str, str]:
    """Section title -> the Python block under it."""
    out, title = {}, ""
    for part in re.split(r"^(## .+)$", PAGE.read_text(), flags=re.M):
        if part.startswith("## "):
            title = part[3:].strip()
            continue
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.M | re.S)
        if blocks:
            out[title] = "\n".join(blocks)
    return out


def test_the_page_has_a_recipe_for_each_extension():
    assert list(recipes()) == ["An advantage rule", "An importance correction", "A lag mode", "A task"]


@pytest.mark.parametrize("title", list(recipes()))
def test_each_recipe_runs(title, tmp_path):
    corrections = dict(loss.CORRECTIONS)
    try:
        exec(compile(recipes()[title], f"{PAGE}: {title}", "exec"), {"tmp_path": tmp_path, "__name__": "recipe"})
    finally:
        loss.CORRECTIONS.clear()
        loss.CORRECTIONS.update(corrections)

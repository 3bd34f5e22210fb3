"""Tasks whose responses write their work: `data.source = "traces:add"`, column addition of two
`digits`-digit numbers with each column's sum and carry written out, then the answer after `####`.

    347+485=  ->  7+5=12,4+8+1=13,3+4+1=8####832

The warm start teaches the format on the trace (`Problem.metadata["trace"]`); the verifier checks only
the final answer (`math:marker`), so a response may reach it by any route. A response is about
`8 * digits + digits + 4` tokens with the tiny model's character tokenizer (31 for 3 digits), against
2-4 for the one-digit default task: room for a hotter sample to take another route, which is what
ERPO's exploration needs (docs/algorithms.md §2).
"""

from __future__ import annotations

import json
import random

from pipeline.config import ConfigError
from pipeline.problems import Problem

PREFIX = "traces:"
TASKS = ("add",)
MARK = "####"  # what precedes the answer (GSM8K's marker: the `math:marker` verifier reads it)


def trace_of(a: int, b: int) -> str:
    """The column-by-column sum of a + b, least significant column first, then the answer."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
        carry = total // 10
    return ",".join(steps) + f"{MARK}{a + b}"


def final_answer(text: str) -> str:
    """What follows the last marker of a response (the whole text if it has none)."""
    return text.rsplit(MARK, 1)[-1].strip()


def traced_problems(source: str, size: int, seed: int, options: dict):
    """`size` problems of the traced task `source`, drawn with `seed`."""
    task = source[len(PREFIX):]
    if task not in TASKS:
        raise ConfigError(f"data.source={source!r}: traced tasks are {', '.join(PREFIX + t for t in TASKS)}")
    unknown = set(options) - {"digits"}
    if unknown:
        raise ConfigError(f"data.task_options for {source!r}: unknown option(s) {sorted(unknown)} (it takes digits)")
    digits = options.get("digits", 3)
    if not isinstance(digits, int) or not 1 <= digits <= 9:
        raise ConfigError(f"data.task_options.digits for {source!r} must be an integer from 1 to 9 (got {digits!r})")
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    for i in range(size):
        a, b = rng.randint(low, high), rng.randint(low, high)
        out.append(Problem(i, f"{a}+{b}", str(a + b), "math:marker", json.dumps({"trace": trace_of(a, b)})))
    return out

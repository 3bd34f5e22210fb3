"""The traced addition task (pipeline/traces.py): each column written out, the final answer after
`####`, which is all the verifier reads."""

import json
import random

import pytest

from actors.answers import extract_answer
from pipeline.config import ConfigError
from pipeline.traces import final_answer, trace_of, traced_problems

pytestmark = pytest.mark.unit


def test_a_trace_writes_every_column_with_its_carry_and_ends_with_the_sum():
    assert trace_of(347, 485) == "7+5=12,4+8+1=13,3+4+1=8####832"
    assert trace_of(999, 1) == "9+1=10,9+0+1=10,9+0+1=10####1000"
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        work, answer = trace_of(a, b).split("####")
        assert int(answer) == a + b
        digits = [int(step.split("=")[1]) % 10 for step in work.split(",")]
        carry_out = int(work.split(",")[-1].split("=")[1]) // 10
        assert int("".join(map(str, reversed(digits)))) + carry_out * 10 ** len(digits) == a + b


def test_problems_are_seeded_and_the_verifier_reads_the_final_answer_only():
    one = traced_problems("traces:add", 8, seed=5, options={"digits": 3})
    assert one == traced_problems("traces:add", 8, seed=5, options={"digits": 3})
    assert one != traced_problems("traces:add", 8, seed=6, options={"digits": 3})
    for p in one:
        a, b = map(int, p.question.split("+"))
        trace = json.loads(p.metadata)["trace"]
        assert p.verifier == "math:marker" and p.answer == str(a + b) and len(trace) >= 20
        assert extract_answer(trace, "marker")[0] == p.answer
        work = trace.split("####")[0]
        assert extract_answer(f"{work}####{a + b + 1}", "marker")[0] == str(a + b + 1)  # the work is not read


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="data.task_options.digits"):
        traced_problems("traces:add", 4, seed=0, options={"digits": 0})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['width'\]"):
        traced_problems("traces:add", 4, seed=0, options={"width": 3})
    with pytest.raises(ConfigError, match="traced tasks are traces:add"):
        traced_problems("traces:mul", 4, seed=0, options={})


def test_the_final_answer_is_what_follows_the_last_marker():
    assert final_answer("7+5=12,4+8+1=13####132 ") == "132"
    assert final_answer("1####2####3") == "3" and final_answer("42") == "42"

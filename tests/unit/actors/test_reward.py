"""Verifiers: real math-verify (in its process pool) on the shared datasets, reasoning-gym scorers."""

import json

import pytest

from actors.reward import Verifier
from pipeline.config import DataConfig, from_dict
from pipeline.data import load_problems
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not (SHARED_DATA / "math500").exists(), reason="../shared/data not present")


@needs_data
def test_math_verify_on_real_answers():
    problems = load_problems(DataConfig(source="math500", split="test", data_dir=str(SHARED_DATA)))
    assert len(problems) == 500
    v = Verifier(timeout_s=60)
    try:
        for p in problems[:5]:
            right, wrong, junk = v.score("math", [f"The answer is $\\boxed{{{p.answer}}}$.",
                                                  "The answer is $\\boxed{-987654}$.", ""], p.answer, "{}")
            assert right == (1.0, "ok"), p.answer
            assert wrong[0] == 0.0
            assert junk == (0.0, "unparsable")
    finally:
        v.close()


def test_hung_verifier_times_out_and_recovers():
    v = Verifier(timeout_s=0.01)  # far below a fresh worker's start-up: every call overruns
    try:
        assert v.score("math", ["\\boxed{1}"], "1", "{}") == [(0.0, "timeout")]
        assert v.counts["timeout"] == 1
        v.timeout_s = 60
        assert v.score("math", ["\\boxed{1}"], "1", "{}") == [(1.0, "ok")]  # a fresh worker took over
    finally:
        v.close()


def test_reasoning_gym_scorer_is_binary():
    cfg = from_dict({"data": {"source": "reasoning_gym:basic_arithmetic", "size": 4}}).data
    p = load_problems(cfg)[0]
    v = Verifier(timeout_s=5)
    wrong = str(int(p.answer) + 1)
    assert v.score(p.verifier, [p.answer, f" {p.answer} ", wrong, ""], p.answer, p.metadata) == [
        (1.0, "ok"), (1.0, "ok"), (0.0, "ok"), (0.0, "unparsable")]
    json.loads(p.metadata)


@needs_data
def test_dataset_registry_and_bad_rows(tmp_path):
    from pipeline.config import ConfigError

    gsm = load_problems(DataConfig(source="gsm8k", split="test", data_dir=str(SHARED_DATA)))
    assert len(gsm) == 1319 and gsm[0].answer == "18"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.jsonl").write_text(
        '{"problem": "1+1", "answer": "2"}\n{"problem": "", "answer": "3"}\n{"problem": "x"}\n')
    probs = load_problems(DataConfig(source="mine", data_dir=str(tmp_path)))
    assert [(p.question, p.answer) for p in probs] == [("1+1", "2")]
    with pytest.raises(ConfigError, match="nosuch"):
        load_problems(DataConfig(source="nosuch", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="task_options"):
        load_problems(DataConfig(source="reasoning_gym:basic_arithmetic", task_options={"bogus": 1}))

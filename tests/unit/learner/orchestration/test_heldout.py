"""Held-out rounds: every problem leased once with k samples at the eval temperature, spread over the
generators, scored when the last result is in."""

import pytest

from learner.orchestration.heldout import Evaluator
from pipeline.config import DataConfig, EvalConfig
from pipeline.messages import Rollout, Sample, pack_floats, pack_ids
from pipeline.models import load_tokenizer
from tests.doubles import RecordingSend


def _result(a, rewards):
    samples = [Sample(tokens=pack_ids([5]), logprobs=pack_floats([-0.1]), reward=r, version_first=0, version_last=0,
                      finish_reason="stop") for r in rewards]
    return Rollout(lease_id=a.lease_id, generator_id=0, prompt_id=a.prompt_id, epoch=a.epoch, temperature=a.temperature,
                   prompt_tokens=a.prompt_tokens, samples=samples, gen_seconds=0.0, verify_seconds=0.0)


def test_a_round_leases_each_problem_once_and_scores_when_complete(tiny_model):
    ev = EvalConfig(size=4, k=2, temperature=0.6, max_tokens=0)
    evaluator = Evaluator(ev, DataConfig(), max_tokens=7, tokenizer=load_tokenizer(tiny_model))
    ids = iter(range(100, 200))
    send = RecordingSend()
    evaluator.start_round(3, lambda: next(ids), [0, 1], send)
    assert [gid for gid, _ in send.sent] == [0, 1, 0, 1]
    leases = [a for _, a in send.sent]
    assert {(a.n, a.temperature, a.max_tokens, a.epoch) for a in leases} == {(2, 0.6, 7, -1)}
    assert sorted(a.prompt_id for a in leases) == [0, 1, 2, 3]
    evaluator.start_round(4, lambda: next(ids), [0, 1], send)  # one round at a time
    assert len(send.sent) == 4
    for a, rewards in zip(leases, ([1, 1], [0, 0], [1, 0], [0, 0])):
        assert evaluator.owns(a.lease_id)
        scored = evaluator.on_rollout(_result(a, rewards))
    step, result = scored
    assert not evaluator.busy and step == 3 and result.problems == 4
    assert (result.mean_at_k, result.pass_at_k) == (pytest.approx(3 / 8), pytest.approx(2 / 4))
    assert evaluator.results == [(3, result)]
    # each problem sampled with a seed of its own, the same in the next round (common random numbers)
    seeds = {a.prompt_id: a.seed for a in leases}
    assert len(set(seeds.values())) == 4 and min(seeds.values()) >= 0
    evaluator.start_round(5, lambda: next(ids), [0, 1], send)
    assert {a.prompt_id: a.seed for _, a in send.sent[4:]} == seeds

import os
import re

import msgspec
import numpy as np
import pytest

from pipeline.messages import (
    PROTOCOL_VERSION, Assignment, Decoder, Heartbeat, Rollout, Sample, Stop, ToGenerator, WeightInit,
    ToLearner, WeightUpdate, WireError, encode, pack_floats, pack_ids, unpack_floats, unpack_ids,
)


def _rollout(n_tokens=5):
    s = Sample(tokens=pack_ids(range(n_tokens)), logprobs=pack_floats(np.linspace(-1, 0, n_tokens)),
               reward=1.0, version_first=3, version_last=4, finish_reason="stop")
    return Rollout(lease_id=7, generator_id=0, prompt_id=2, epoch=1, temperature=1.1,
                   prompt_tokens=pack_ids([1, 2, 3]), samples=[s, s], gen_seconds=0.1, verify_seconds=0.01)


def test_round_trip_every_message():
    to_gen = Decoder(ToGenerator, 1 << 20)
    to_learner = Decoder(ToLearner, 1 << 20)
    msgs_g = [
        Assignment(lease_id=1, prompt_id=2, epoch=0, temperature=1.2, n=8, policy_version=5,
                   prompt_tokens=pack_ids([4, 5]), answer="12", verifier="math", max_tokens=16),
        WeightUpdate(version=3, info={"names": ["a.weight"], "dtype_names": ["float32"], "shapes": [[2, 3]]}),
        WeightInit(backend="gloo", info={"master_address": "127.0.0.1", "master_port": 5, "rank_offset": 1,
                                         "world_size": 3}),
        Stop(reason="done"),
    ]
    for m in msgs_g:
        assert to_gen.decode(encode(m)) == m
    hb = Heartbeat(generator_id=1, pid=os.getpid(), status="ready", version=2,
                   probe_version=2, probe_logprobs=[-1.5, -0.2])
    for m in (hb, _rollout()):
        assert to_learner.decode(encode(m)) == m


def test_arrays_are_compact_and_exact():
    ids = np.array([0, 1, 2**31 - 1, 99], dtype=np.int64)
    assert unpack_ids(pack_ids(ids)).tolist() == ids.tolist()
    lp = np.array([-0.5, -1e-7, -20.25], dtype=np.float32)
    assert unpack_floats(pack_floats(lp)).tolist() == lp.tolist()
    frame = encode(_rollout(1000))
    # 2 samples x 1000 tokens x (4 B id + 4 B log-prob) plus a little framing, not 2k msgpack numbers each
    assert len(frame) < 2 * 1000 * 8 + 1000


@pytest.mark.parametrize("frame, kind", [
    (b"\x00\x01garbage", "malformed"),
    (encode(_rollout())[:-7], "malformed"),
    (msgspec.msgpack.encode({"type": "Rollout", "protocol": PROTOCOL_VERSION + 1}), "protocol"),
    (msgspec.msgpack.encode({"type": "Rollout", "protocol": PROTOCOL_VERSION, "lease_id": "x"}), "schema"),
    (msgspec.msgpack.encode({"type": "Nope", "protocol": PROTOCOL_VERSION}), "schema"),
    (encode(Stop()), "schema"),  # a generator-bound message arriving at the learner
    (b"\x00" * 5000, "oversized"),
])
def test_bad_frames_raise_wire_error_with_kind(frame, kind):
    with pytest.raises(WireError) as err:
        Decoder(ToLearner, 4096).decode(frame)
    assert err.value.kind == kind


PICKLE_PATTERNS = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle)\b", re.M), "pickle module"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"), "torch.load without weights_only=True"),
    (re.compile(r"\.(send|recv)_pyobj\("), "pyzmq's pickled send/recv"),
    (re.compile(r"\b(broadcast|all_gather|gather|scatter)_object(_list)?\("), "torch.distributed object collectives"),
]


def pickle_uses(text: str) -> list[str]:
    return [what for pattern, what in PICKLE_PATTERNS if pattern.search(text)]


def test_no_pickle_in_the_codebase():
    from tests.conftest import ROOT

    for sub in ("pipeline", "actors", "learner", "benchmarks"):
        for path in (ROOT / sub).rglob("*.py"):
            assert pickle_uses(path.read_text()) == [], path
    assert pickle_uses((ROOT / "run.py").read_text()) == []


@pytest.mark.parametrize("code", ["import pickle", "from pickle import loads", "import cloudpickle as cp",
                                  "state = torch.load(path)", "torch.load(p, weights_only=False)",
                                  "sock.send_pyobj(x)", "dist.broadcast_object_list(objs, 0)"])
def test_the_pickle_check_catches_each_form(code):
    assert pickle_uses(f"x = 1\n{code}\n") != []
    assert pickle_uses("torch.load(p, weights_only=True)\n") == []

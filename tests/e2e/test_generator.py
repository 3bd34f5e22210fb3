"""The generator loop: continuous batching and the two weight-update modes, over real sockets and a
real gloo weight group. The engine is the stand-in (actors/standin.py) as a test double: its groups
take a known time, so what is checked is the loop's scheduling, not sampling."""

import threading
import time
import traceback

import pytest
import torch

from actors.generator import Generator

from pipeline.config import GeneratorSettings
from actors.standin import StandInEngine
from learner.weights.links import Snapshot, await_generator
from pipeline.messages import Assignment, Rollout, Stop, pack_ids, unpack_ids
from pipeline.transport import LearnerEndpoint
from tests.conftest import make_config

DELAY = 0.6  # seconds each group takes in the stand-in engine


class Harness:
    """The test plays the learner: its endpoint and weight link, a Generator running in a thread."""

    def __init__(self, tmp_path, model_path: str, update_mode: str):
        cfg = make_config(tmp_path, "--generator.update_mode", update_mode)
        self.ep = LearnerEndpoint("127.0.0.1", 0, 0, cfg.transport.max_frame_bytes)
        self.engine = StandInEngine(model_path, delay_s=DELAY)
        self.gen: Generator | None = None
        self.thread = threading.Thread(target=self._generate, args=(cfg, model_path), daemon=True)
        self.thread.start()
        self.arrived: dict[int, tuple[float, Rollout]] = {}
        self.prompt = pack_ids(self.engine.tokenizer.encode("1+2="))
        # as the supervisor does on a first heartbeat: open the weight group, ask the generator to join
        self.link = await_generator(self.ep, 0, bucket_bytes=1 << 20, timeout_s=60)

    def _generate(self, cfg, model_path: str) -> None:
        self.gen = Generator(GeneratorSettings.of(cfg), 0, self.ep.addresses, model_path, engine=self.engine)
        self.gen.run()

    def _wait(self, done, what: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            for msg in self.ep.recv(20):
                if isinstance(msg, Rollout):
                    self.arrived[msg.lease_id] = (time.monotonic(), msg)

    def lease(self, lease_id: int) -> None:
        assert self.ep.send(0, Assignment(lease_id=lease_id, prompt_id=lease_id, epoch=0, temperature=1.0,
                                          n=4, policy_version=0, prompt_tokens=self.prompt, answer="3",
                                          verifier="math", max_tokens=6))

    def update(self, version: int) -> None:
        """Send new weights (the stand-in only needs their size); returns once their WeightUpdate has
        gone out, so that a lease sent next arrives after it."""
        self.link.submit(Snapshot(version, [("w", torch.randn(64))]))
        self._wait(lambda: self.link.client.posted == version, f"the update to version {version}")
        self.ep.recv(0)  # sends what was posted

    def wait_rollouts(self, *lease_ids: int) -> None:
        self._wait(lambda: all(i in self.arrived for i in lease_ids), f"rollouts {lease_ids}")

    def two_leases(self, update_between: bool):
        """Lease 1; once the engine runs it, optionally announce weights 1; lease 2. Returns
        (arrival time, rollout) of each."""
        self.lease(1)
        self._wait(lambda: ("submit", 1) in self.engine.events, "lease 1 to start")
        if update_between:
            self.update(1)
        self.lease(2)
        self.wait_rollouts(1, 2)
        return self.arrived[1], self.arrived[2]

    def close(self) -> None:
        self.ep.send(0, Stop(reason="test"))
        self.thread.join(10)
        self.link.close()
        self.ep.close()


@pytest.fixture
def harness(tmp_path, tiny_model, request):
    h = Harness(tmp_path, tiny_model, request.param)
    yield h
    h.close()


def _versions(r: Rollout) -> set[tuple[int, int]]:
    return {(s.version_first, s.version_last) for s in r.samples}


@pytest.mark.parametrize("harness", ["drain"], indirect=True)
def test_groups_join_a_running_batch(harness):
    """A lease that arrives while another group runs starts at once beside it (continuous batching),
    so it comes back about its own delay after it was sent, not after the first group's."""
    (t1, r1), (t2, r2) = harness.two_leases(update_between=False)
    assert harness.engine.peak_running == 2
    ev = harness.engine.events
    assert ev.index(("submit", 2)) < ev.index(("done", 1))  # it waited for nothing
    assert len(r1.samples) == len(r2.samples) == 4
    assert all(s.reward == 1.0 or s.reward == 0.0 for s in r1.samples + r2.samples)


@pytest.mark.parametrize("harness", ["drain"], indirect=True)
def test_drain_mode_keeps_a_group_on_one_version(harness):
    """An update waiting closes admission: the running group finishes under the old weights, the
    update lands, and the lease that came after it starts under the new ones."""
    (t1, r1), (t2, r2) = harness.two_leases(update_between=True)
    assert _versions(r1) == {(0, 0)} and _versions(r2) == {(1, 1)}
    assert harness.engine.peak_running == 1  # the second group did not start beside the first
    ev = harness.engine.events
    # the running group finished, then the update landed, then the next group started
    assert ev.index(("done", 1)) < ev.index(("load", 1)) < ev.index(("submit", 2))
    assert all(s.token_versions == b"" for s in r1.samples + r2.samples)


@pytest.mark.parametrize("harness", ["inflight"], indirect=True)
def test_inflight_mode_updates_under_running_groups(harness):
    """The update lands between two steps while the first group runs: that group's tokens record
    both versions, and the next lease starts at once under the new weights."""
    (t1, r1), (t2, r2) = harness.two_leases(update_between=True)
    assert _versions(r1) == {(0, 1)} and _versions(r2) == {(1, 1)}
    for s in r1.samples:
        tv = unpack_ids(s.token_versions).tolist()
        assert tv[0] == 0 and tv[-1] == 1 and len(tv) == len(unpack_ids(s.tokens))
    assert harness.engine.peak_running == 2
    ev = harness.engine.events
    # the update landed while group 1 ran, and group 2 started at once, before group 1 finished
    assert ev.index(("submit", 1)) < ev.index(("load", 1)) < ev.index(("submit", 2)) < ev.index(("done", 1))
    assert harness.gen.version == 1
    assert harness.ep.rejected.total == 0  # every frame the generator sent was well-formed


class EngineThatCannotRun(StandInEngine):
    """The stand-in, except that its first forward pass (the probe after joining) fails, as vLLM's
    did where its compiled kernels would not build on a CPU."""

    def probe(self, version: int = 0) -> list[float]:
        raise RuntimeError("backend='inductor' raised: CppCompileError")


def test_an_engine_that_cannot_run_ends_the_generator_saying_why(tmp_path, tiny_model):
    """A failure of the engine's own first forward pass is not a failed rendezvous: the generator
    stops with the engine's error (it used to wait for another weight group, for ever, while the
    learner saw it 'starting')."""
    cfg = make_config(tmp_path)
    ep = LearnerEndpoint("127.0.0.1", 0, 0, cfg.transport.max_frame_bytes)
    failed: list[BaseException] = []

    def generate() -> None:
        try:
            Generator(GeneratorSettings.of(cfg), 0, ep.addresses, tiny_model, engine=EngineThatCannotRun(tiny_model, 0.1))
        except BaseException as exc:  # noqa: BLE001 - what the generator process would die of
            failed.append(exc)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    link = await_generator(ep, 0, bucket_bytes=1 << 20, timeout_s=60)
    try:
        end = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < end:
            ep.recv(20)  # the learner's side goes on answering
        assert not thread.is_alive(), "the generator went on waiting after its engine failed"
        assert [str(e) for e in failed] == ["backend='inductor' raised: CppCompileError"]
        # and it released its sockets: one left to the garbage collector hung a later test's process
        (gen,) = {f.f_locals["self"] for f, _ in traceback.walk_tb(failed[0].__traceback__)
                  if isinstance(f.f_locals.get("self"), Generator)}
        assert gen.endpoint.ctx.closed
    finally:
        link.close()
        ep.close()

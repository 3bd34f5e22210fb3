"""The loop's tick with its edges faked and no process started, built by learner/build.py's `build`
as a run builds it: real lease book, tracker, intake, lag control, ledger, supervisor, weights'
publisher and stepper; a queue for the endpoint, a scripted launcher, a gated trainer, recording
weight links, a tokenizer of no model and a held checkpoint writer (tests/doubles.py)."""

import pytest

from learner.build import build
from learner.loop import Learner
from learner.orchestration.exact import lease_seed
from pipeline.config import from_dict
from pipeline.problems import Problem
from pipeline.messages import Heartbeat
from tests.builders import rollout
from tests.doubles import GatedTrainer, HeldWriter, NoModelTokenizer, QueueEndpoint, ScriptedLauncher, recording_link


def _learner(tmp_path, launcher=None, gated=False, **sections) -> tuple[Learner, QueueEndpoint, GatedTrainer]:
    raw = {"run": {"out_dir": str(tmp_path), "seed": 11}, "log": {"wandb": False, "progress": False},
           "generator": {"max_tokens": 8, "max_inflight": 8, "kv_cache_bytes": 1 << 24},
           "weights": {"group": "own"},
           "data": {"chat_template": False}, "eval": {"final": False}}
    for section, fields in sections.items():
        raw.setdefault(section, {}).update(fields)
    cfg = from_dict(raw)
    problems = [Problem(i, f"q{i}", str(i), "reasoning_gym:basic_arithmetic") for i in range(12)]
    endpoint, trainer = QueueEndpoint(), GatedTrainer(gated)
    held: dict = {}
    writer = HeldWriter(lambda: held["learner"].stepper)
    learner = held["learner"] = build(cfg, "", problems, endpoint, launcher, trainer=trainer,
                                      tokenizer=NoModelTokenizer(), open_link=recording_link, writer=writer)
    learner.writer = writer
    return learner, endpoint, trainer


def _ready(gid=0, version=0):
    return Heartbeat(generator_id=gid, status="ready", version=version, pid=1)


def _join(learner, endpoint, gid=0):
    """A generator's first heartbeat (handed in at one tick), and the tick after: its leases go out."""
    endpoint.deliver(_ready(gid))
    learner.tick()
    learner.tick()


def _answer(endpoint, leases, rewards=(1.0, 0.0, 1.0, 0.0), version=0, gid=0):
    """The generator's rollouts for these leases (mixed groups: each has signal)."""
    endpoint.deliver(*[rollout(a, n=len(rewards), rewards=list(rewards), version=version, generator_id=gid)
                       for a in leases])


def _finish_step(learner):
    learner.stepper.running.future.result(timeout=60)  # wait on the step's own future, not on time


def test_a_rollout_arrives_and_a_step_starts_then_its_bookkeeping_closes_its_leases(tmp_path):
    learner, endpoint, trainer = _learner(tmp_path, learner={"groups_per_step": 2, "group_size": 4, "max_lag": 1,
                                                               "steps": 5})
    _join(learner, endpoint)  # the generator joins: its weight link opens, leases go out up to (k + 1) x B
    out = endpoint.assignments()
    assert len(out) == 4 and {gid for gid, _ in endpoint.sent} == {0}
    _answer(endpoint, out[:1])
    learner.tick()
    assert learner.stepper.running is None and len(learner.buffer) == 1  # one group is not a batch of two
    _answer(endpoint, out[1:2])
    learner.tick()
    assert learner.stepper.running is not None
    assert [g.lease_id for g in learner.stepper.running.groups] == [a.lease_id for a in out[:2]]
    _finish_step(learner)
    learner.tick()
    assert trainer.version == 1 and trainer.steps == [[a.lease_id for a in out[:2]]]
    assert learner.leases.outcomes["trained"] == 2 and learner.stats.step_rewards == [0.5]
    assert learner.tracker.prompts[out[0].prompt_id].visits == 1


def test_a_generator_that_dies_has_its_leases_reissued_to_its_successor(tmp_path):
    launcher = ScriptedLauncher()
    learner, endpoint, _ = _learner(tmp_path, launcher, generator={"count": 1},
                                    learner={"groups_per_step": 2, "group_size": 4, "max_lag": 1})
    learner.supervisor.start_all(launcher)
    _join(learner, endpoint)
    first = endpoint.assignments()
    assert first and learner.leases.outstanding(0) == len(first)
    learner.supervisor.lives[0].started -= 120.0  # it lived two minutes: restarted without a back-off
    launcher.exited[0] = 1  # its process ended
    learner.tick()
    assert learner.leases.outcomes["reissued"] == len(first) and learner.leases.open == 0
    assert launcher.started == [0, 0]  # restarted (it lived: no back-off)
    endpoint.sent.clear()
    _join(learner, endpoint)
    again = endpoint.assignments()
    # the same prompt visits go out again, under new lease ids
    assert [(a.prompt_id, a.epoch) for a in again] == [(a.prompt_id, a.epoch) for a in first]
    assert not {a.lease_id for a in again} & {a.lease_id for a in first}
    assert learner.leases.counts_add_up()


def test_a_checkpoint_due_is_cut_between_two_steps_and_holds_the_next_step_until_written(tmp_path):
    learner, endpoint, trainer = _learner(tmp_path, learner={"groups_per_step": 2, "group_size": 4, "max_lag": 2,
                                                               "checkpoint_every": 1, "steps": 4})
    _join(learner, endpoint)
    out = endpoint.assignments()
    _answer(endpoint, out[:4])  # two batches' worth
    learner.tick()
    assert learner.stepper.running is not None  # step 0 runs on the first two
    _finish_step(learner)
    learner.tick()
    # step 0 is done, its checkpoint due: the cut is taken with no step running, and the two groups
    # still buffered are in it; the next step waits for the write though a batch is ready
    assert learner.writer.cuts == [(1, False, sorted(a.lease_id for a in out[2:4]))]
    assert learner.stepper.running is None and len(learner.buffer) == 2
    learner.tick()
    assert learner.stepper.running is None
    learner.writer.release()
    learner.tick()
    assert [g.lease_id for g in learner.stepper.running.groups] == [a.lease_id for a in out[2:4]]


def test_exact_lag_leases_wave_t_plus_k_plus_1_only_after_step_t_and_seeds_it_by_step(tmp_path):
    k = 1
    learner, endpoint, trainer = _learner(tmp_path, gated=True, learner={
        "groups_per_step": 2, "group_size": 4, "max_lag": k, "lag_control": "exact", "steps": 4})
    _join(learner, endpoint)
    waves = {}
    for a in endpoint.assignments():
        waves.setdefault(a.wave, []).append(a)
    assert sorted(waves) == [0, 1]  # waves 0..k at the start
    for step, leased in waves.items():  # seeds follow the rule: run seed, the step, the place in the wave
        assert [a.seed for a in leased] == [lease_seed(11, step, i) for i in range(len(leased))]
    _answer(endpoint, waves[1])  # wave 1 back first: step 0 still waits for its own wave
    learner.tick()
    assert learner.stepper.running is None
    _answer(endpoint, waves[0])
    learner.tick()
    assert [g.lease_id for g in learner.stepper.running.groups] == [a.lease_id for a in waves[0]]
    for _ in range(3):
        learner.tick()  # step 0 runs: no new wave goes out
    assert {a.wave for a in endpoint.assignments()} == {0, 1}
    trainer.gate.set()
    _finish_step(learner)
    learner.tick()  # bookkeeping of step 0; version 1 goes to the generator
    assert trainer.version == 1 and {a.wave for a in endpoint.assignments()} == {0, 1}
    # wave 2 goes out once the generator holds version 1 (and before step 1 changes the weights),
    # seeded by its step (2), not by the version (1)
    learner.tick()
    assert [g.lease_id for g in learner.stepper.running.groups] == [a.lease_id for a in waves[1]]
    wave2 = [a for a in endpoint.assignments() if a.wave == 2]
    assert wave2 and all(a.policy_version == 1 for a in wave2)
    assert [a.seed for a in wave2] == [lease_seed(11, 2, i) for i in range(len(wave2))]
    assert wave2[0].seed != lease_seed(11, 1, 0)


@pytest.mark.parametrize("kind", ["bounded", "exact"])
def test_lag_control_is_one_interface(kind, tmp_path):
    learner, _, _ = _learner(tmp_path, learner={"lag_control": kind})
    for name in ("lease", "admit", "readmit", "next_batch", "settle", "spent", "counters", "state_dict",
                 "load_state_dict"):
        assert callable(getattr(learner.lag, name))
    assert len(learner.lag.buffer) == 0


def test_liveness_has_one_record_that_the_supervisor_writes_and_a_shared_group_reads(tmp_path):
    """docs/design.md §3, "One record of liveness": a heartbeat handed to the loop stamps the
    supervisor's record, and the shared weight group that build() made judges silence from it."""
    learner, endpoint, _ = _learner(tmp_path, weights={"group": "shared"})
    groups = learner.weights.groups
    endpoint.deliver(_ready(0))
    learner.tick()
    heard = learner.supervisor.liveness.last_heard(0)
    assert heard is not None and groups.silent_for(0, heard + 7.0) == 7.0
    assert not hasattr(groups, "heard")  # no second record in the weights' room

"""One weight group for the pool (learner/weights/shared.py) on the real pipeline: four generators
train on one group with every version verified; and with a generator SIGSTOPped past
`weights.timeout_s` and another SIGKILLed in the middle of the broadcast it holds up, the others get
that version in a re-formed group and go on receiving, both are restarted and rejoin, no lease is
lost, and the run is step for step the calm run's until the first fault (exact lag control)."""

import json
import logging
import os
import signal
import threading

from learner.observe.events import StepStarted
from learner.session import open_learner
from learner.weights.shared import SharedGroup
from pipeline.data import load_problems
from pipeline.launcher import Launcher
from tests.conftest import STANDIN, WIDE, assert_every_lease_accounted_for, make_config, run_pipeline, wait_for

FOUR = ["--generator.count", "4", "--learner.groups_per_step", "4", "--eval.final", "false",
        "--learner.checkpoint_every", "0"]


def test_four_generators_train_on_one_group_with_every_version_verified(tiny_model, tmp_path):
    cfg = make_config(tmp_path, *FOUR, "--learner.steps", "5")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data))
    stats = run_pipeline(learner, cfg)
    pool = learner.weights.groups
    assert isinstance(pool, SharedGroup) and sorted(pool.members) == [0, 1, 2, 3]
    assert pool.formations <= 4  # formed as the engines came up, never once per version
    assert stats.weights_mismatch == 0 and learner.weights.published[-1] == 5
    assert all(learner.weights.checked.get(g) == 5 for g in range(4)), learner.weights.checked  # each verified it
    assert all(stats.rollouts_by_generator[g] > 0 for g in range(4))
    assert_every_lease_accounted_for(learner)


STEPS, FAULT_AT, TIMEOUT_S = 10, 3, 10.0


def _run(model: str, tmp_path, faults: bool, caplog) -> tuple[list, dict, object]:
    cfg = make_config(tmp_path, *WIDE, *FOUR, "--learner.steps", str(STEPS), "--learner.lag_control", "exact",
                      "--learner.max_lag", "0", "--weights.timeout_s", str(TIMEOUT_S),
                      "--weights.bucket_bytes", str(4 << 20), "--generator.heartbeat_timeout_s", "600")
    cfg.run_dir.mkdir(parents=True)
    seen: dict = {}
    holder: dict = {}

    def observe(event) -> None:
        # On the loop's thread, as step FAULT_AT starts: under lag 0 its wave is all back and the next
        # is not leased until version FAULT_AT + 1 has been handed out, so generator 1 holds no lease
        # and that broadcast cannot finish while it is stopped.
        if faults and isinstance(event, StepStarted) and event.version == FAULT_AT and "stopped" not in seen:
            seen["stopped"] = holder["learner"].supervisor.generators[1].pid
            os.kill(seen["stopped"], signal.SIGSTOP)

    learner = holder["learner"] = open_learner(
        cfg, model, load_problems(cfg.data), observer=observe,
        launcher=lambda c, addresses: Launcher(c, addresses, extra_args=STANDIN))

    def kill_one_mid_broadcast() -> None:
        pool = learner.weights.groups
        try:
            if not wait_for(lambda: "stopped" in seen and pool.link is not None and pool.link.sending is not None
                            and 2 in pool.arrived, "generator 2 inside the held-up broadcast",
                            seen):
                return
            seen["killed_mid_broadcast"] = pool.link.sending is not None
            os.kill(learner.supervisor.generators[2].pid, signal.SIGKILL)
            wait_for(lambda: learner.supervisor.restarts >= 2 and all(
                pool.joined(g) and pool.handed(g) > FAULT_AT + 2 for g in range(4)), "both back, receiving", seen)
            seen["rejoined"] = {g: pool.handed(g) for g in range(4)}
        finally:
            if "stopped" in seen:
                try:
                    os.kill(seen["stopped"], signal.SIGCONT)  # killed by then; if not, let it go
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=kill_one_mid_broadcast, daemon=True)
    if faults:
        thread.start()
    with caplog.at_level(logging.INFO, logger="learner.weights.shared"):
        run_pipeline(learner, cfg)
    if faults:
        thread.join(10)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], seen, learner


def test_a_stopped_and_a_killed_member_are_cut_out_and_the_rest_go_on_as_the_calm_run_did(wide_model, tmp_path,
                                                                                            caplog):
    calm, _, _ = _run(wide_model, tmp_path / "calm", faults=False, caplog=caplog)
    caplog.clear()
    faulty, seen, learner = _run(wide_model, tmp_path / "faulty", faults=True, caplog=caplog)
    assert "timeout" not in seen, seen
    assert seen["killed_mid_broadcast"] and "rejoined" in seen, seen
    log = [r.getMessage() for r in caplog.records]
    cut = [m for m in log if m.startswith("generator 1: cut out of the shared weight group")]
    assert cut, log  # pinned on the stopped one ...
    assert not any(m.startswith(("generator 0: cut", "generator 3: cut")) for m in log), log  # ... never on the others
    reached = [m for m in log if m.startswith(f"version {FAULT_AT + 1} reached the re-formed weight group")]
    assert reached, log
    took = float(reached[0].split(" s after")[0].rsplit(" ", 1)[1])
    assert took < 3 * TIMEOUT_S, reached  # its timeout, a rendezvous that waited for the stopped one, the rebuild
    assert learner.supervisor.restarts >= 2 and learner.trainer.version == STEPS
    assert_every_lease_accounted_for(learner)
    # up to the fault (the step from version FAULT_AT had its batch before it), the very same losses
    assert [loss for s, loss in faulty if s <= FAULT_AT + 1] == [loss for s, loss in calm if s <= FAULT_AT + 1]
    assert len(calm) == len(faulty) == STEPS

"""Runs that last days: a restart budget as a rate, a generator that cannot start cooled down while
the others go on and tried again after its rest, the run stopped, naming why, only when no generator
could ever start; a stall named. The generators run
the real generator loop with the stand-in engine (actors/standin.py), so that restarts take seconds."""

import os
import signal
import threading

import pytest

from learner.session import open_learner
from learner.orchestration.supervisor import SupervisorError
from pipeline.data import load_problems
from pipeline.launcher import Launcher
from tests.conftest import STANDIN, assert_every_lease_accounted_for, make_config, wait_for
from tests.e2e.killer import Killer
from tests.doubles import FailingStartLauncher


def standin(cfg, addresses) -> Launcher:
    """Generator processes on the stand-in engine."""
    return Launcher(cfg, addresses, extra_args=STANDIN)


def _run(learner):
    try:
        stats = learner.run()
        learner.stop_generators()
        return stats
    finally:
        learner.close()


def test_twenty_five_kills_of_one_generator_finish_the_run_with_every_lease_accounted_for(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "100000", "--learner.groups_per_step", "2", "--eval.final", "false",
                      "--learner.checkpoint_every", "0", "--generator.restart_backoff_max_s", "0.5",
                      "--generator.max_restarts_per_hour", "60")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=standin)
    killer = Killer(learner, kills=25, steps_between=1, pause_s=0.2, seed=3, timeout_s=300).start()
    stats = _run(learner)
    killer.join()
    kills, problems = killer.kills, killer.problems
    assert problems == [] and len(kills) == 25, (problems, kills)
    assert learner.supervisor.restarts == 25 and learner.supervisor.cooling == {}
    assert learner.leases.outcomes["reissued"] > 0
    assert_every_lease_accounted_for(learner)
    assert len(stats.step_rewards) == learner.trainer.version >= kills[-1] + 2


def test_a_generator_that_cannot_start_cools_down_while_another_keeps_the_run_going(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "4", "--generator.count", "2", "--eval.final", "false",
                      "--generator.max_failed_starts", "2", "--generator.restart_backoff_max_s", "0.2")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=lambda c, addresses: FailingStartLauncher(
        c, addresses, extra_args=STANDIN, broken={1}))
    stats = _run(learner)
    assert learner.trainer.version == 4
    assert_every_lease_accounted_for(learner)
    assert set(stats.rollouts_by_generator) == {0}
    (why,) = learner.supervisor.cooling.values()
    assert "failed to start 2 times in a row" in why and 1 in learner.supervisor.cooling
    assert "exit code 3: RuntimeError: the engine cannot start" in learner.supervisor.lives[1].last_error
    assert learner.counters()["generators_cooling"] == {1: why}


def test_a_run_whose_only_generator_never_starts_stops_naming_why(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "4", "--eval.final", "false", "--generator.max_failed_starts", "2",
                      "--generator.restart_backoff_max_s", "0.2")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=lambda c, addresses: FailingStartLauncher(
        c, addresses, broken={0}))
    with pytest.raises(SupervisorError, match=r"no generator could start.*generator 0: failed to start 2 times in a "
                                              r"row.*exit code 3: RuntimeError: the engine cannot start"):
        _run(learner)


def test_a_generator_killed_during_its_starts_cools_down_and_comes_back(tiny_model, tmp_path):
    """Once the run was up, its only generator is killed once at work and then during each of its next
    starts: it cools down (not retired), is tried again after its rest, and the run finishes; the
    status screen told why meanwhile."""
    from learner.observe.health import status

    cfg = make_config(tmp_path, "--learner.steps", "100000", "--eval.final", "false", "--learner.checkpoint_every", "0",
                      "--generator.max_failed_starts", "2", "--generator.restart_backoff_max_s", "0.2",
                      "--generator.cooldown_s", "[12.0]")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=standin)
    seen: dict = {}

    def wait(cond, what, timeout=180.0):
        return wait_for(cond, what, seen, timeout, every_s=0.005)  # a restart is caught within its start

    def kill_its_starts():
        sup = learner.supervisor
        try:
            if not wait(lambda: learner.trainer.version >= 2, "training to start"):
                return
            killed = {sup.generators[0].pid}
            os.kill(sup.generators[0].pid, signal.SIGKILL)  # at work: a death, then a restart
            for _ in range(2):  # each start it makes is killed before its engine is up
                if not wait(lambda: [p for p in Killer.generators() if p.pid not in killed], "a restart"):
                    return
                (p,) = [p for p in Killer.generators() if p.pid not in killed]
                killed.add(p.pid)
                p.kill()
            if not wait(lambda: sup.cooling, "the cool-down"):
                return
            seen["cooled_at"] = learner.trainer.version
            # the learner writes its health every few seconds: the rest is longer than that
            if wait(lambda: "generator 0: cooling" in status(cfg.run_dir), "the status to tell"):
                seen["status"] = status(cfg.run_dir)
            wait(lambda: not sup.cooling and learner.trainer.version >= seen["cooled_at"] + 3, "training after the rest")
        finally:
            learner.stop_requested = True

    thread = threading.Thread(target=kill_its_starts, daemon=True)
    thread.start()
    stats = _run(learner)
    thread.join(10)
    assert "timeout" not in seen, seen
    assert "generator 0: cooling" in seen["status"] and "exit code -9 (SIGKILL)" in seen["status"]
    assert "failed to start 2 times in a row (generator.max_failed_starts)" in seen["status"]
    assert learner.supervisor.lives[0].cooldowns == 1 and learner.supervisor.restarts == 3
    assert len(stats.step_rewards) == learner.trainer.version >= seen["cooled_at"] + 3
    assert_every_lease_accounted_for(learner)


def test_a_stalled_step_stops_the_run_naming_the_stage_and_status_tells(tiny_model, tmp_path):
    """An optimiser step that hangs (here: a test double that sleeps in it) ends the run with an
    error naming the step, never a silent hang; the run folder's health says how far it got."""
    from learner.observe.health import status
    from learner.observe.watch import StallError
    from tests.doubles import SlowStepTrainer

    cfg = make_config(tmp_path, "--learner.steps", "20", "--eval.final", "false", "--learner.step_timeout_s", "2")
    cfg.run_dir.mkdir(parents=True)
    trainer = SlowStepTrainer.slow(cfg, tiny_model, delay_s=6.0)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), trainer=trainer, launcher=standin)
    with pytest.raises(StallError, match=r"optimiser step at version 0 .* has run for \d+s \(learner.step_timeout_s"):
        _run(learner)
    text = status(cfg.run_dir)
    assert "step 0 / 20" in text and "generator 0: up" in text, text

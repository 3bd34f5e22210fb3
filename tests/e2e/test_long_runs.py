"""Runs that last days: a restart budget as a rate, a generator that cannot start set aside while the
others go on, the run stopped, naming why, only when no generator is left; a stall named. The generators run
the real generator loop with the stand-in engine (actors/standin.py), so that restarts take seconds."""

import pytest

from learner.session import open_learner
from learner.orchestration.supervisor import SupervisorError
from pipeline.data import load_problems
from pipeline.launcher import Launcher
from tests.conftest import balanced, make_config
from tests.e2e.killer import Killer
from tests.doubles import FailingStartLauncher

STANDIN = ["--standin-delay", "0.05"]


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
    assert learner.supervisor.restarts == 25 and learner.supervisor.retired == {}
    assert learner.leases.outcomes["reissued"] > 0 and balanced(learner)
    assert len(stats.step_rewards) == learner.trainer.version >= kills[-1] + 2


def test_a_generator_that_cannot_start_is_retired_while_another_keeps_the_run_going(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "4", "--generator.count", "2", "--eval.final", "false",
                      "--generator.max_failed_starts", "2", "--generator.restart_backoff_max_s", "0.2")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=lambda c, addresses: FailingStartLauncher(
        c, addresses, extra_args=STANDIN, broken={1}))
    stats = _run(learner)
    assert learner.trainer.version == 4 and balanced(learner)
    assert set(stats.rollouts_by_generator) == {0}
    (why,) = learner.supervisor.retired.values()
    assert "failed to start 2 times in a row" in why and 1 in learner.supervisor.retired
    assert "the engine cannot start" in learner.supervisor.lives[1].last_error
    assert learner.counters()["generators_retired"] == {1: why}


def test_when_the_last_generator_is_retired_the_run_stops_naming_it(tiny_model, tmp_path):
    """The clock runs from the learner's start: it must outlast two failed starts of a process under
    load (3 s did not, beside a busy loop on each core), so that the retirement is what it names."""
    cfg = make_config(tmp_path, "--learner.steps", "4", "--eval.final", "false", "--generator.max_failed_starts", "2",
                      "--generator.restart_backoff_max_s", "0.2", "--generator.none_alive_timeout_s", "30")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=lambda c, addresses: FailingStartLauncher(
        c, addresses, broken={0}))
    with pytest.raises(SupervisorError, match=r"no generator has been alive.*generator 0: failed to start 2 times"):
        _run(learner)


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

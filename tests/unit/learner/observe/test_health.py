"""A run's health at a glance (`run.py status`): one screen from the run folder, and its warnings."""

from learner.observe.health import GeneratorHealth, Health, status, write


def _health(**kw) -> Health:
    base = dict(written=10_000.0, started=4_000.0, pid=42, step=120, steps=200, samples_per_s=31.5, lag_mean=1.2,
                lag_max=2, leases={"dispatched": 990, "open": 24, "trained": 960},
                generators={0: GeneratorHealth(state="up", seen_s_ago=0.4),
                            1: GeneratorHealth(state="restarting", restarts_last_hour=3, last_error="CUDA error")},
                weights_mismatch=0, checkpoint="step-00000100", checkpoint_time=9_000.0, checkpoint_every_s=1_000.0)
    return Health(**{**base, **kw})


def test_status_shows_step_rate_generators_checkpoint_and_time_left(tmp_path):
    write(tmp_path, _health())
    text = status(tmp_path, now=10_010.0)
    assert "step 120 / 200" in text and "31.5 samples/s" in text and "lag now mean 1.2 max 2" in text
    assert "time left at this rate 67 min" in text  # 80 steps at 120 steps per 6000 s
    assert "generator 1: restarting (3 restarts in the last hour" in text and "last error: CUDA error" in text
    assert "newest checkpoint: step-00000100 (17 min old)" in text and "WARNING" not in text


def test_status_warns_of_a_cooling_generator_a_mismatch_an_old_checkpoint_and_a_silent_learner(tmp_path):
    gens = {0: GeneratorHealth(state="cooling", cooling="failed to start 3 times in a row; exit code 1: OOM",
                               retry_in_s=900.0)}
    write(tmp_path, _health(generators=gens, weights_mismatch=2, checkpoint_time=7_000.0))
    text = status(tmp_path, now=10_500.0)  # written at 10,000: 400 s of its 900 s rest are left
    assert "generator 0: cooling, tried again in 7 min: failed to start 3 times in a row; exit code 1: OOM" in text
    assert "WARNING: 2 weight updates did not verify" in text
    assert "WARNING: a generator is cooling down after failing" in text
    assert "WARNING: no checkpoint for 58 min, over two intervals" in text
    assert "WARNING: the learner has not written its health for" in text
    assert "no health.json" in status(tmp_path / "elsewhere")

"""The metrics log: a resumed run's metrics continue at its checkpoint, and alerts reach the operator."""

import json

import msgspec

from learner.observe.metrics import MetricsLog


def test_a_resumed_run_continues_its_metrics_at_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    log = MetricsLog(path, use_wandb=False, wandb_mode="disabled", run_name="r", config={}, resumed_at=4,
                     checkpoint="step-00000004")
    log.log(5, {"loss": 0.55})
    log.close()
    rows = [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4, 5]  # step 5 once: the resumed run's
    assert rows[4] == {"step": 4, "event": "resumed", "checkpoint": "step-00000004", "lines_moved": 2}
    assert rows[5]["loss"] == 0.55
    assert len((tmp_path / "metrics.lost.jsonl").read_text().splitlines()) == 2  # the old step 5 and the cut line


class RecordingWandb:
    """Stands in for a wandb run: records alerts."""

    def __init__(self):
        self.alerts = []

    def alert(self, title, text):
        self.alerts.append((title, text))

    def finish(self):
        pass


def test_what_an_operator_must_see_is_alerted(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", use_wandb=False, wandb_mode="disabled", run_name="r", config={})
    log.alert("nothing to send to", "no wandb: the log has it")  # never raises
    log.wandb = RecordingWandb()
    log.alert("generator 1 retired", "failed to start 3 times in a row")
    assert log.wandb.alerts == [("generator 1 retired", "failed to start 3 times in a row")]
    log.close()


def test_the_real_wandb_writes_each_step_offline_and_a_resume_continues_the_same_run(tmp_path):
    from tests.wandb_records import read_run

    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path, use_wandb=True, wandb_mode="offline", run_name="r", config={"lr": 1e-4})
    assert first.wandb is not None, "wandb did not start (see the warning logged above)"
    for step in (1, 2, 3):
        first.log(step, {"loss": 0.5 / step})
    first.close()
    again = MetricsLog(path, use_wandb=True, wandb_mode="offline", run_name="r", config={"lr": 1e-4},
                       resumed_at=2, checkpoint="step-00000002")
    for step in (3, 4):
        again.log(step, {"loss": 0.1 * step})
    again.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"), key=lambda p: read_run(p).history[0][0])
    assert len(runs) == 2
    a, b = (read_run(p) for p in runs)
    assert a.run_id == b.run_id == (tmp_path / "wandb_id").read_text()  # the resume continues the run
    assert [s for s, _ in a.history] == [1, 2, 3] and [s for s, _ in b.history] == [3, 4]
    assert float(a.history[1][1]["loss"]) == 0.25 and float(b.history[1][1]["loss"]) == 0.4
    assert float(a.config["lr"]) == 1e-4

"""`run.py train`'s own wiring (learner/session.py), before anything starts."""

import pytest

from learner.session import train
from pipeline.config import ConfigError, from_dict


def test_a_fresh_run_refuses_a_run_folder_that_already_holds_one(tmp_path):
    cfg = from_dict({"run": {"out_dir": str(tmp_path), "name": "r"}, "log": {"wandb": False, "progress": False}})
    (cfg.run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match=r"already holds a run \(newest checkpoint step-00000002\)"):
        train(cfg)  # not resuming: refused before any model is built or process started
    assert (cfg.run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing touched

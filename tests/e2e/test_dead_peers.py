"""No hang on a dead peer, either way (docs/gpu.md, "Dead peers"): a generator stopped in the middle
of a broadcast costs the learner its link after `weights.timeout_s`, never a step, and is restarted;
a generator whose learner goes silent or vanishes in the middle of a transfer leaves by itself."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from learner.session import open_learner
from learner.weights.links import await_generator, take_snapshot
from pipeline.data import load_problems
from pipeline.launcher import Launcher
from pipeline.messages import WeightUpdate
from pipeline.transport import LearnerEndpoint
from pipeline.weight_wire import buckets, describe
from tests.conftest import ROOT, STANDIN, WIDE, assert_every_lease_accounted_for, make_config, run_pipeline, wait_for

def test_a_generator_stopped_mid_broadcast_costs_its_link_not_a_step_and_is_restarted(wide_model, tmp_path, caplog):
    """With a weight group of its own (weights.group = own; a shared group's faults:
    tests/e2e/test_shared_group.py)."""
    cfg = make_config(tmp_path, *WIDE, "--weights.group", "own", "--learner.steps", "100000", "--generator.count", "2",
                      "--eval.final", "false",
                      "--learner.checkpoint_every", "0", "--learner.groups_per_step", "2", "--weights.timeout_s", "10",
                      "--weights.bucket_bytes", str(4 << 20), "--generator.heartbeat_timeout_s", "600")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, wide_model, load_problems(cfg.data),
                           launcher=lambda c, addresses: Launcher(c, addresses, extra_args=STANDIN))
    seen: dict = {}

    def stop_one():
        try:
            sup = learner.supervisor
            by = learner.stats.rollouts_by_generator
            if not wait_for(lambda: learner.trainer.version >= 2 and by[0] > 0 and by[1] > 0, "both at work", seen):
                return
            pid = sup.generators[1].pid
            os.kill(pid, signal.SIGSTOP)  # it stops reading: the broadcasts to it block part-way
            seen["stopped_at"] = learner.trainer.version
            if not wait_for(lambda: sup.restarts >= 1, "its restart", seen, timeout=120):
                os.kill(pid, signal.SIGCONT)
                return
            seen["restarted_at"] = learner.trainer.version
            seen["stopped_was_killed"] = not _alive(pid)
            back = by[1]
            # its successor joins, is sent the newest weights (the stand-in engine reports no probe to
            # verify them by) and samples
            if wait_for(lambda: by[1] >= back + 3 and learner.weights.handed(1) > seen["restarted_at"],
                     "its successor at work", seen):
                seen["done_at"] = learner.trainer.version
        finally:
            learner.stop_requested = True

    thread = threading.Thread(target=stop_one, daemon=True)
    with caplog.at_level(logging.ERROR, logger="learner.orchestration.supervisor"):
        thread.start()
        run_pipeline(learner, cfg)
        thread.join(10)
    assert "timeout" not in seen, seen
    # the learner went on stepping while generator 1 was stopped and its link waited out weights.timeout_s
    assert seen["restarted_at"] >= seen["stopped_at"] + 3, seen
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generator 1:")]
    assert failures and all("its weight link failed" in m for m in failures), failures  # not silence: the link
    assert seen["stopped_was_killed"] and learner.supervisor.restarts == 1
    assert_every_lease_accounted_for(learner)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@pytest.mark.parametrize("learner_end", ["silent", "vanished"])
def test_a_generator_whose_learner_ends_mid_transfer_leaves_by_itself(wide_model, tmp_path, learner_end):
    """The test plays the learner: it opens a real weight group with a `run.py generate` process
    started by hand (no parent to die with), posts a version and sends its first bucket only. Then it
    either goes silent (a learner stopped, or blocked: the transfer itself would wait for ever where,
    as on NCCL, nothing times it out; here gloo's timeout is set far beyond the learner's) or closes
    its side of the group (a learner killed)."""
    learner_timeout = 8.0
    cfg = make_config(tmp_path, *WIDE, "--generator.learner_timeout_s", str(learner_timeout),
                      "--weights.bucket_bytes", str(1 << 20))
    cfg.run_dir.mkdir(parents=True)
    from pipeline.config import GeneratorSettings, dumps_generator

    (cfg.run_dir / "generator.json").write_text(dumps_generator(GeneratorSettings.of(cfg)))
    ep = LearnerEndpoint("127.0.0.1", 0, 0, cfg.transport.max_frame_bytes)
    log_path = cfg.run_dir / "joiner.log"
    proc = None
    try:
        a = ep.addresses
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "generate", "--config-json", str(cfg.run_dir / "generator.json"),
                 "--generator-id", "3", "--host", a.host, "--control-port", str(a.control_port), "--rollout-port",
                 str(a.rollout_port), "--model-path", wide_model, *STANDIN], stdout=log, stderr=subprocess.STDOUT)
        link = await_generator(ep, 3, bucket_bytes=1 << 20, timeout_s=3600.0)  # gloo itself never times out here
        snapshot = take_snapshot(1, _Weights(wide_model), "float32")
        meta = [(name, t) for name, t in snapshot.weights]
        from vllm.distributed.weight_transfer.base import ParamMeta

        params = [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in meta]
        ep.post(3, WeightUpdate(version=1, info=describe(params)))
        first = next(iter(buckets(params, 1 << 20)))
        tensors = dict(meta)
        link.engine.group.broadcast(torch.cat([tensors[m.name].reshape(-1).view(torch.uint8) for m in first]))
        started = time.monotonic()
        if learner_end == "vanished":
            link.close(timeout=10)  # its thread shuts the group down: the generator's receive fails at once
            del link
        # from here the learner answers nothing
        rc = proc.wait(timeout=learner_timeout + 120)
        took = time.monotonic() - started
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        ep.close()
    text = log_path.read_text(errors="replace")
    assert "receiving version 1" in text, text[-3000:]
    if learner_end == "silent":
        assert rc == 75, text[-3000:]  # ended by its beacon from inside the transfer
        assert "while receiving version 1" in text and took >= learner_timeout, (took, text[-3000:])
    else:  # its receive fails at once (it samples nothing on torn weights), then it leaves by itself
        assert "receiving version 1 failed" in text and "no word from the learner" in text, text[-3000:]
        assert took < learner_timeout + 60, (rc, took, text[-3000:])


class _Weights:
    """The wide model's weights, as the learner's trainer would hand them over."""

    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.device = torch.device("cpu")

    def host_weights(self, dtype, into=None):
        return [(n, p.detach().to(dtype).clone()) for n, p in self.model.named_parameters()]

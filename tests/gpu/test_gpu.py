"""GPU paths (`make test-gpu`): each part skips, saying why, where what it needs is missing, so the
learner parts run on a GPU machine that has torch alone. Never part of `make test`'s pass/fail.

- a learner step of a real model shape (Qwen2.5-0.5B's, randomly initialised: no weights are fetched)
  in bf16-mixed with micro-batches: its peak memory against the README arithmetic, and tokens/s;
- learner vs vLLM behaviour log-probs in bf16 at T = 0.7 and 1.3 (needs vLLM built for CUDA);
- a weight snapshot (what a broadcast sends) adds at most one parameter to the GPU's memory;
- the NCCL weight broadcast into a CUDA vLLM engine, checked by the probe (needs two GPUs: NCCL
  will not put two ranks on one device), and one GPU shared by learner and generator (weights over
  gloo through host memory);
- a 5-step run of the pipeline on a real model (needs vLLM built for CUDA and RLVR_GPU_MODEL, a
  Hugging Face model folder).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.learner import random_groups
from tests.builders import with_advantage
from tests.conftest import ROOT, make_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _vllm_cuda() -> str:
    if not torch.cuda.is_available():
        return "needs CUDA"
    if importlib.util.find_spec("vllm") is None:
        return "needs vLLM built for CUDA (pip install -e '.[gpu]')"
    return ""


vllm_cuda = pytest.mark.skipif(bool(_vllm_cuda()), reason=_vllm_cuda() or "-")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL: one rank per device)")

# Qwen2.5-0.5B's shape (config.json of the public model), randomly initialised.
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6, pad_token_id=151643)


@pytest.fixture(scope="module")
def qwen05(tmp_path_factory, tiny_model):
    """The shape with a tokenizer the engine can load (the tiny model's: prompts here are token ids,
    so only its special tokens matter), nothing fetched."""
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from learner.training.checkpoint import TOKENIZER_FILES

    path = tmp_path_factory.mktemp("qwen05")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**QWEN05)).save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (Path(tiny_model) / name).exists():
            shutil.copy2(Path(tiny_model) / name, path / name)
    return str(path)


@cuda
def test_learner_step_memory_and_throughput_on_a_real_shape(qwen05, tmp_path):
    """bf16-mixed, activation checkpointing, budget 16k tokens, 64 samples of 1024 + 256 tokens."""
    from learner.training.trainer import Trainer

    budget, chunk = 16384, 2048
    cfg = make_config(tmp_path, "--learner.precision", "bf16-mixed", "--learner.activation_checkpointing", "true",
                      "--learner.micro_batch_tokens", str(budget), "--learner.logit_chunk_tokens", str(chunk),
                      "--generator.max_tokens", "1024", "--learner.groups_per_step", "4", "--learner.device", "cuda")
    trainer = Trainer.from_config(cfg, qwen05)
    groups = random_groups(4, 16, 256, 1024, QWEN05["vocab_size"])
    trainer.step(groups)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.step(groups)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    params = sum(p.numel() for p in trainer.model.parameters())
    L, H, I, V = (QWEN05[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size"))
    # the README's arithmetic: 16 B/param of fp32 state, checkpointed layer inputs, one layer's
    # recompute, the logits chunk (x3)
    expected = (16 * params + budget * H * 2 * L + budget * I * 2 * 3 + chunk * V * 4 * 3) / 2**30
    tokens = 64 * (256 + 1024)
    print(json.dumps({"card": torch.cuda.get_device_name(), "peak_gib": peak, "expected_gib": expected,
                      "tokens_per_s": tokens / seconds}))
    assert peak < 1.5 * expected, (peak, expected)


@cuda
def test_a_weight_snapshot_adds_at_most_one_parameter_to_the_gpu(qwen05, tmp_path):
    """The broadcast sends a snapshot in (pinned) host memory, taken one parameter at a time: the
    learner's GPU never holds a second copy of the model (a 7B model's would be 15 GB)."""
    from learner.weights.links import take_snapshot
    from learner.training.trainer import Trainer

    cfg = make_config(tmp_path, "--learner.precision", "bf16-mixed", "--learner.device", "cuda")
    trainer = Trainer.from_config(cfg, qwen05)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    snap = take_snapshot(1, trainer, "bfloat16")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    largest = max(p.numel() * p.element_size() for p in trainer.model.parameters())
    print(json.dumps({"card": torch.cuda.get_device_name(), "snapshot_mb": snap.nbytes / 1e6,
                      "peak_extra_mb": extra / 1e6, "largest_parameter_mb": largest / 1e6}))
    assert all(t.device.type == "cpu" and t.is_pinned() for _, t in snap.weights)
    assert extra <= largest + (1 << 20), (extra, largest)


@vllm_cuda
def test_learner_logprobs_match_vllm_in_bf16(qwen05, tmp_path):
    """Tolerance 0.1 nats (max) and 0.02 (mean): both sides compute in bf16, with different kernels
    and summation orders; a bf16 logit carries ~3 significant digits, so a softmax over 152k entries
    differs by ~1e-2 typically, while the bug this guards (raw vs tempered log-probs) is ~0.1-1."""
    from actors.engine import Engine, Request
    from pipeline.config import GeneratorSettings
    from learner.training.trainer import Trainer
    from learner.training.batch import build_batch
    from learner.training.groups import Group

    # the engine's context and cache for this test (the toy default's 64 MiB cannot hold a 32k context)
    cfg = make_config(tmp_path, "--model.dtype", "bfloat16", "--learner.precision", "bf16",
                      "--generator.max_tokens", "64", "--learner.device", "cuda",
                      "--generator.max_model_len", "2048", "--generator.kv_cache_bytes", "auto")
    engine = Engine(GeneratorSettings.of(cfg), qwen05, seed=0)
    trainer = Trainer.from_config(cfg, qwen05)
    prompt = list(range(100, 140))
    for T in (0.7, 1.3):
        (key, done), = [(k, g) for k, g in _generate(engine, Request(prompt, 4, T, 64))]
        groups = [Group(lease_id=0, prompt_id=0, epoch=0, temperature=T, prompt=torch.tensor(prompt),
                        responses=[torch.tensor(c.tokens) for c in done],
                        behaviour_logprobs=[torch.tensor(c.logprobs) for c in done],
                        rewards=torch.tensor([1.0, 0, 1, 0]), version_first=0, version_last=0)]
        batch = build_batch(with_advantage(groups), 0, trainer.pad_id).to(trainer.device)
        with torch.no_grad():
            lp = trainer.logprobs(batch)
        mask = batch.response_mask.bool()
        diff = (lp[mask] - batch.mu[mask]).abs()
        assert float(diff.max()) < 0.1 and float(diff.mean()) < 0.02, (T, float(diff.max()), float(diff.mean()))


def _generate(engine, request):
    engine.submit(1, request)
    out = []
    while not out:
        out = engine.decode_step(0)
    return out


@two_gpus
@vllm_cuda
def test_nccl_broadcast_into_a_cuda_engine_is_verified_by_the_probe(tiny_model, tmp_path):
    from tests.conftest import run_pipeline
    from learner.session import open_learner
    from pipeline.data import load_problems

    cfg = make_config(tmp_path, "--learner.steps", "3", "--learner.device", "cuda:1", "--generator.devices",
                      '["0"]', "--eval.final", "false")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data))
    stats = run_pipeline(learner, cfg)
    assert learner.launcher.weights_backend == "nccl"
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2


@vllm_cuda
def test_one_gpu_shared_by_learner_and_generator(tiny_model, tmp_path):
    """configs/gpu/one-gpu-qwen2.5-0.5b.toml's layout on the tiny model: both on GPU 0, weights over
    gloo through host memory, every version verified by the probe."""
    from tests.conftest import run_pipeline
    from learner.session import open_learner
    from pipeline.data import load_problems

    cfg = make_config(tmp_path, "--learner.steps", "3", "--learner.device", "cuda:0", "--generator.devices",
                      '["0"]', "--weights.backend", "gloo", "--generator.gpu_memory_utilization", "0.3",
                      "--generator.kv_cache_bytes", "auto", "--eval.final", "false")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data))
    stats = run_pipeline(learner, cfg)
    assert learner.launcher.weights_backend == "gloo"
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2


@pytest.mark.skipif(not os.environ.get("RLVR_GPU_MODEL"), reason="needs RLVR_GPU_MODEL, a Hugging Face model folder")
@two_gpus
@vllm_cuda
def test_five_steps_of_a_real_model(tmp_path):
    """The generator on GPU 0, the learner on GPU 1 (one card each: a start-up check refuses a shared one)."""
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--model.path", os.environ["RLVR_GPU_MODEL"],
                          "--generator.devices", '["0"]', "--learner.device", "cuda:1",
                          "--learner.steps", "5", "--run.out_dir", str(tmp_path), "--log.wandb", "false",
                          "--warmstart.enabled", "false", "--model.dtype", "bfloat16",
                          "--learner.precision", "bf16-mixed", "--generator.max_tokens", "256"],
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT steps=5" in out.stdout and "'weights_mismatch': 0" in out.stdout


@cuda
def test_the_stage_clock_times_the_training_stream_while_a_side_stream_is_busy():
    """A broadcast blocked on a slow generator keeps its own stream busy: a step's stages, timed by
    events on the training stream, must neither wait for it nor be charged for it."""
    from learner.training.clock import StageClock

    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    with torch.cuda.stream(side):
        for _ in range(400):  # seconds of work on the side stream (a stand-in for a stuck broadcast)
            a = a @ a / 64.0
    clock = StageClock(torch.device("cuda", torch.cuda.current_device()))
    t0 = time.perf_counter()
    with clock.stage("forward"):
        b = torch.randn(1024, 1024, device="cuda") @ torch.randn(1024, 1024, device="cuda")
    took = clock.take()["time/forward"]
    host = time.perf_counter() - t0
    side_done = side.query()
    side.synchronize()
    print(json.dumps({"card": torch.cuda.get_device_name(), "clock_stage_ms": took * 1e3, "host_ms": host * 1e3,
                      "side_stream_still_busy": not side_done}))
    assert not side_done, "the side stream finished too soon to show anything: make its work longer"
    assert took < 0.05 and host < 0.5, (took, host)
    del b


@cuda
def test_fsdp2_with_one_rank_under_torchrun_steps_as_one_device(tiny_model, tmp_path):
    """The sharded learner on the GPU (FSDP2, the `cpu:gloo,cuda:nccl` group) under torchrun with one
    rank: its steps, probe, gathered checkpoint and resume match the one-device trainer's."""
    from pipeline.config import dumps

    cfg = make_config(tmp_path, "--learner.device", "cuda")
    (tmp_path / "cfg.json").write_text(dumps(cfg))
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                        str(ROOT / "tests" / "scripts" / "sharded_step.py"), str(tmp_path / "cfg.json"), tiny_model,
                        str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    print(json.dumps({"card": torch.cuda.get_device_name(), "fsdp2_one_rank_weights_diff": res["weights"],
                      "fsdp2_one_rank_resumed_diff": res["resumed"]}))
    assert res["version"] == 2 and res["moved"] > 1e-4 and res["weights"] < 1e-4 and res["resumed"] < 1e-4

"""A real pretrained model (SmolLM2-135M-Instruct, packaged on PyPI and converted offline) through the
pipeline's parts: chat-templated prompts, learner vs vLLM log-probs at mixed temperatures, a
broadcast verified by the probe, a training step, token ids as the truth, and `run.py eval` with its
JSONL. `make test-real` (which installs what the conversion needs) runs them; CI runs it too."""

import json
import subprocess
import sys

import pytest
import torch

from tests.builders import with_advantage
from tests.conftest import ROOT, CACHE_ARGS

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("gguf") is None, reason="needs the real-model extras: make real")

MODEL_CFG = ROOT / "configs" / "models" / "smollm2-135m-instruct.toml"
QUESTIONS = ["Calculate 7 + 5.", "What is 9 minus 4?"]


def _cfg(tmp_path, *extra):
    from pipeline.config import load

    return load([ROOT / "configs" / "default.toml", MODEL_CFG], [
        "--run.out_dir", str(tmp_path), *CACHE_ARGS, "--run.name", "real",
        "--log.wandb", "false", "--log.progress", "false", "--generator.max_tokens", "48",
        "--data.instruction", "Give the final answer as a number.", *extra])


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from learner.training.warmstart import prepare_model

    return prepare_model(_cfg(tmp_path_factory.mktemp("m")), progress=False)


@pytest.fixture(scope="module")
def engine(smollm2, tmp_path_factory):
    from actors.engine import Engine
    from pipeline.config import GeneratorSettings

    return Engine(GeneratorSettings.of(_cfg(tmp_path_factory.mktemp("e"))), smollm2, seed=0)


@pytest.fixture(scope="module")
def trainer(smollm2, tmp_path_factory):
    from learner.training.trainer import Trainer

    return Trainer.from_config(_cfg(tmp_path_factory.mktemp("t"), "--learner.lr", "1e-5"), smollm2)


def _groups(engine, cfg, temperatures):
    from actors.engine import Request
    from learner.training.groups import Group
    from pipeline.prompts import render

    groups = []
    for i, (q, t) in enumerate(zip(QUESTIONS, temperatures)):
        prompt = render(engine.tokenizer, q, cfg.data)
        (comps,) = engine.generate([Request(prompt, 2, t, 48)])
        groups.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=t, prompt=torch.tensor(prompt),
                            responses=[torch.tensor(c.tokens) for c in comps],
                            behaviour_logprobs=[torch.tensor(c.logprobs) for c in comps],
                            rewards=torch.tensor([1.0, 0.0]), version_first=0, version_last=0))
    return with_advantage(groups, cfg)


def test_chat_template_prompt_and_model_derived_settings(engine, smollm2, tmp_path):
    from pipeline.models import stop_token_ids
    from pipeline.prompts import render

    cfg = _cfg(tmp_path)
    text = engine.tokenizer.decode(render(engine.tokenizer, QUESTIONS[0], cfg.data))
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "Calculate 7 + 5.\nGive the final answer as a number.<|im_end|>" in text
    im_end = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(smollm2, engine.tokenizer) and im_end in engine.stop_ids
    assert engine.max_model_len == 1024  # generator.max_model_len of the model config, not the tiny model's 128


def test_learner_logprobs_match_vllm_at_mixed_temperatures_in_one_batch(engine, trainer, tmp_path):
    """T = 0.7 and 1.3 in one batch, on the model's own chat-templated responses; fp32 both sides."""
    from learner.training.batch import build_batch

    groups = _groups(engine, _cfg(tmp_path), [0.7, 1.3])
    batch = build_batch(groups, 0, trainer.pad_id)
    with torch.no_grad():
        logp = trainer.logprobs(batch)
    mask = batch.response_mask.bool()
    assert int(mask.sum()) >= 8
    gap = float((logp - batch.mu)[mask].abs().max())
    assert gap < 1e-3, gap
    # token ids are the truth: the trained sequence is the prompt and exactly the sampled ids
    for g, row in zip([g for g in groups for _ in g.responses], range(len(batch.group))):
        j = row % 2
        assert batch.input_ids[row, :len(g.prompt) + len(g.responses[j])].tolist() == \
            g.prompt.tolist() + g.responses[j].tolist()
    for g in groups:  # scored at T = 1 instead, the same samples are another distribution
        g.temperature = 1.0
    with torch.no_grad():
        wrong = trainer.logprobs(build_batch(groups, 0, trainer.pad_id))
    assert float((wrong - batch.mu)[mask].abs().max()) > 1e-2


def test_a_step_then_a_broadcast_verified_by_the_probe(engine, trainer, tmp_path):
    from pipeline.probe import probe_matches
    from tests.links import open_link, send

    before = engine.probe()
    assert probe_matches(before, trainer.probe_logprobs(), "float32")[0]
    metrics = trainer.step(_groups(engine, _cfg(tmp_path), [1.0, 1.0])).metrics
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    link, outbox = open_link(engine, bucket_bytes=64 << 20)  # 540 MB of float32 weights: nine buckets
    send(link, outbox, engine, trainer)
    link.close()
    after, expected = engine.probe(), trainer.probe_logprobs()
    assert probe_matches(after, expected, "float32")[0]
    assert not probe_matches(before, expected, "float32")[1] < 1e-6  # the step moved the weights


def test_eval_on_gsm8k_writes_every_response(smollm2, tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "eval", "--config", str(ROOT / "configs" / "default.toml"),
                        str(MODEL_CFG), "--model", "smollm2-135m-instruct", "--data", "gsm8k", "--eval.size", "3",
                        "--eval.k", "2", "--eval.max_tokens", "64", *CACHE_ARGS,
                        "--log.progress", "false", "--out", str(out),
                        "--data.instruction", "Solve step by step and end with '#### <answer>'."],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(out.read_text())
    (score,) = summary["scores"]
    assert score["problems"] == 3 and score["k"] == 2 and score["too_long"] == 0
    rows = [json.loads(line) for line in (tmp_path / "eval.responses.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {(r["problem"], r["sample"]) for r in rows} == {(p, s) for p in range(3) for s in range(2)}
    assert all(r["gold"] and "response" in r and r["reward"] in (0.0, 1.0) for r in rows)
    assert sum(r["reward"] for r in rows) / 6 == pytest.approx(score["mean_at_k"])


def test_eval_with_nothing_but_the_model_folder(smollm2, tmp_path):
    """`run.py eval --model FOLDER --data gsm8k`: no config file, so nothing of the toy task; the
    model's chat template, a generation length for a real model, and a KV cache that fits."""
    from pipeline.config import from_dict
    from pipeline.model_settings import derive
    from pipeline.models import load_tokenizer
    from pipeline.prompts import render

    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "eval", "--model", smollm2, "--data", "gsm8k",
                        "--eval.size", "2", "--eval.k", "1", "--log.progress", "false", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "KV cache" in r.stdout and "chat template on" in r.stdout  # the settings block, printed
    settings = json.loads((tmp_path / "eval.model_settings.json").read_text())
    assert settings["chat_template"] is True and settings["max_tokens"] >= 256 and settings["kv_cache_bytes"] > 0
    rows = [json.loads(line) for line in (tmp_path / "eval.responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and max(row["tokens"] for row in rows) > 6  # not the toy task's 6 tokens
    # the prompts it sampled from are chat-templated token ids (the template's assistant turn opens them)
    cfg, _ = derive(from_dict({"model": {"path": smollm2}}), smollm2, sequences=1, on_gpu=False)
    tok = load_tokenizer(smollm2)
    ids = render(tok, rows[0]["question"], cfg.data)
    assert ids[:len(tok.encode("<|im_start|>"))] == tok.encode("<|im_start|>")
    assert tok.decode(ids).rstrip().endswith("assistant")


def test_train_with_a_model_folder_and_a_jsonl_file(smollm2, tmp_path):
    """`run.py train --model FOLDER --data FILE.jsonl` starts with the settings derived from the model
    (written to the run folder) and takes a step."""
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a} + {b}? Answer with the number only.",
                                        "answer": str(a + b)}) + "\n" for a, b in [(2, 3), (4, 4), (1, 6), (5, 2)]))
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--model", smollm2, "--data", str(data),
                        "--run.out_dir", str(tmp_path), "--run.name", "own", "--learner.steps", "1",
                        "--learner.groups_per_step", "1", "--learner.group_size", "2", "--generator.max_inflight", "2",
                        "--eval.final", "false", "--log.wandb", "false", "--log.progress", "false"],
                       capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    settings = json.loads((tmp_path / "own" / "model_settings.json").read_text())
    resolved = json.loads((tmp_path / "own" / "resolved_config.json").read_text())
    assert settings["chat_template"] is True and resolved["data"]["chat_template"] is True
    assert resolved["generator"]["max_tokens"] == settings["max_tokens"] >= 256  # what the generator was given
    assert "RESULT steps=1" in r.stdout

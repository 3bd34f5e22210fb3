"""The embedded default's model: build the tiny Qwen2 model and warm-start it by supervised training.

RL needs a policy that already solves a fair share of prompts (a group with no correct answer teaches
nothing under GRPO). The result is cached under runs/cache/<hash of what shaped it>, so repeated runs
and tests reuse it; the folder is written under a temporary name and renamed, so a crash never leaves
a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import msgspec
import torch

from pipeline.config import Config
from pipeline.data import load_problems
from pipeline.models import PACKAGED, build_tiny_model, load_causal_lm, load_tokenizer, packaged_model
from pipeline.prompts import render
from pipeline.traces import final_answer

log = logging.getLogger(__name__)


def _seed(cfg: Config) -> int:
    return cfg.warmstart.seed if cfg.warmstart.seed >= 0 else cfg.run.seed


def _cache_key(cfg: Config) -> str:
    shaped_by = [cfg.model, cfg.warmstart, cfg.data, _seed(cfg)]
    return hashlib.sha256(msgspec.json.encode(shaped_by)).hexdigest()[:12]


def prepare_model(cfg: Config, progress: bool = True) -> str:
    """Path of the model to train: `model.path` if given (a packaged model converted once into the
    cache), else the cached warm-started tiny model."""
    if cfg.model.path in PACKAGED:
        return str(packaged_model(cfg.model.path, cfg.cache_dir, progress))
    if cfg.model.path:
        return cfg.model.path
    out = cfg.cache_dir / f"tiny-{_cache_key(cfg)}"
    if (out / "model.safetensors").exists():
        return str(out)
    # a folder of this process's own: the cells of a parallel sweep may build the same model at once
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(tmp, cfg.model, _seed(cfg))
    if cfg.warmstart.enabled and cfg.warmstart.steps > 0:
        acc = supervised_warmstart(cfg, tmp, progress)
        log.info("warm start: greedy accuracy on the RL prompts %.2f", acc)
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same model first: theirs is as good (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _examples(cfg: Config, tokenizer, size: int, seed: int) -> list[tuple[list[int], list[int]]]:
    problems = load_problems(cfg.data, size=size, seed=seed)
    out = []
    for p in problems:
        prompt = render(tokenizer, p.question, cfg.data)
        out.append((prompt, tokenizer.encode(_target(p)) + [tokenizer.eos_token_id]))
    return out


def _target(p) -> str:
    """What the warm start teaches: a task whose responses write their work (pipeline/traces.py) is
    taught the work, else the answer."""
    return json.loads(p.metadata).get("trace", p.answer) if p.metadata else p.answer


def supervised_warmstart(cfg: Config, model_dir: Path, progress: bool) -> float:
    """Cross-entropy on answer tokens for a held-apart set of problems; returns greedy accuracy on
    the RL prompts (which the warm start never saw, their seed differs).

    With `warmstart.until_accuracy`, it stops at the first check (every `check_every` steps) whose
    greedy accuracy on a second held-apart set reaches it. A fixed number of steps leaves models of
    very different skill on other seeds and CPUs (greedy 0.43 to 0.67 after 350 steps, seeds 0-2
    here), and RL from a weak start learns little; a target makes the start about the same."""
    from tqdm import tqdm

    ws = cfg.warmstart
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, "float32")
    model.train()
    examples = _examples(cfg, tokenizer, ws.examples, cfg.data.seed + 7919)
    checks = load_problems(cfg.data, size=ws.check_size, seed=cfg.data.seed + 104729) if ws.until_accuracy else []
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr)
    gen = torch.Generator().manual_seed(_seed(cfg))
    bar = tqdm(range(ws.steps), desc="warm start (supervised)", disable=not progress, leave=False)
    for step in bar:
        _supervised_step(model, opt, examples, ws.batch_size, tokenizer.pad_token_id, gen)
        if checks and (step + 1) % ws.check_every == 0:
            acc = greedy_accuracy(model, tokenizer, cfg, checks)
            model.train()
            bar.set_postfix(greedy=f"{acc:.2f}")
            if acc >= ws.until_accuracy:
                log.info("warm start: greedy accuracy %.2f >= %.2f after %d steps", acc, ws.until_accuracy, step + 1)
                break
    else:
        if checks:
            log.warning("warm start: greedy accuracy below %.2f after all %d steps (warmstart.steps)",
                        ws.until_accuracy, ws.steps)
    model.save_pretrained(model_dir)
    return greedy_accuracy(model, tokenizer, cfg, load_problems(cfg.data, size=cfg.data.size))


def _supervised_step(model, opt, examples, batch_size: int, pad: int, gen: torch.Generator) -> None:
    idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
    seqs = [examples[i][0] + examples[i][1] for i in idx]
    s = max(map(len, seqs))
    ids = torch.full((len(seqs), s), pad)
    labels = torch.full((len(seqs), s), -100)
    att = torch.zeros((len(seqs), s), dtype=torch.long)
    for r, i in enumerate(idx):
        p, a = examples[i]
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
        att[r, :len(p) + len(a)] = 1
    loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def greedy_accuracy(model, tokenizer, cfg: Config, problems) -> float:
    model.eval()
    correct = 0
    for p in problems:
        ids = torch.tensor([render(tokenizer, p.question, cfg.data)])
        target = _target(p)
        # (before the model's settings are derived, "auto" reads as: the target's length)
        length = cfg.generator.max_tokens if cfg.generator.max_tokens != "auto" else len(target) + 1
        out = model.generate(ids, max_new_tokens=length, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        correct += final_answer(text) == p.answer
    return correct / len(problems)

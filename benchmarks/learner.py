"""`run.py bench learner`: the learner's optimiser step beside its plain baselines.

1. overhead: the step with the lag-corrected loss (tis) at per-sample temperatures, beside the same step
   with plain GRPO's clip at T = 1 (tiny model).
2. step_ratio: on a model of SmolLM2-135M's shape (49,152 vocabulary, hidden 576; randomly initialised,
   fewer layers so that it runs in minutes on a CPU), tokens/s of a learner step against a plain
   transformers forward + backward (full logits, cross-entropy) of the same tokens in the same
   micro-batches, each followed by the same AdamW update.
3. memory_growth: the peak memory of a step (a child process's peak RSS over its baseline) at 16x the
   samples over 1x, at one token budget.
4. packed_speedup, packed_ratio: on the same shape, SmolLM2-135M-Instruct's own response lengths (the
   120 responses in shared/data/responses, groups of 4), useful tokens/s of a packed step against a
   padded one (budget 2048, as `make train-real`), and against a plain transformers forward +
   backward of the same samples one by one, unpadded (what packing must come close to).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import msgspec

from benchmarks.timing import median_time, print_table

ROOT = Path(__file__).resolve().parent.parent
# SmolLM2-135M's config.json, but `layers` decoder layers (30 in the real model).
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                     num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                     max_position_embeddings=8192, pad_token_id=2)


def bench_learner(cfg, model_path: str, trials: int = 20, quiet: bool = False) -> dict:
    out = bench_loss_overhead(cfg, model_path, trials, quiet=True)
    if quiet:
        return out
    shaped = smollm2_shaped(cfg.cache_dir)
    out.update(bench_step_ratio(cfg, shaped))
    out.update(bench_memory_growth(shaped))
    out.update(bench_packing(cfg, shaped))
    print_table([
        ("loss overhead: tis + per-sample T / plain GRPO clip (tiny model)",
         f"{out['tis_step_s'] * 1000:.1f} / {out['plain_step_s'] * 1000:.1f} ms = {out['overhead']:.3f}"),
        ("SmolLM2-shaped step (49k vocab, 4 layers), learner / plain fwd+bwd",
         f"{out['learner_tok_s']:.0f} / {out['plain_tok_s']:.0f} tokens/s = {out['step_ratio']:.3f}"),
        ("  the same, logits in chunks of 256 (memory mode)",
         f"{out['chunked_tok_s']:.0f} tokens/s = {out['chunked_step_ratio']:.3f} of plain"),
        ("peak step memory at 1x / 4x / 16x samples (budget 1024 tokens)",
         " / ".join(f"{m / 1024:.0f} MB" for m in out["peaks_kb"]) + f"  growth {out['memory_growth']:.3f}"),
        ("  16x in one piece (budget 0)", f"{out['one_piece_kb'] / 1024:.0f} MB"),
        (f"SmolLM2's response lengths ({out['samples']} samples, {out['tokens']} tokens), useful tokens/s",
         f"packed {out['packed_tok_s']:.0f} / padded {out['padded_tok_s']:.0f} / one by one {out['plain_tok_s_1x1']:.0f}"),
        ("  padding in the padded step; packed speedup (goal ~1 / (1 - padding))",
         f"{out['padding_frac']:.2f}; {out['packed_speedup']:.2f} (1 / (1 - padding) = {1 / (1 - out['padding_frac']):.2f})"),
    ])
    print(f"RESULT overhead={out['overhead']:.3f} step_ratio={out['step_ratio']:.3f} "
          f"memory_growth={out['memory_growth']:.3f} packed_speedup={out['packed_speedup']:.3f} "
          f"packed_ratio={out['packed_ratio']:.3f} padding_frac={out['padding_frac']:.3f}")
    return out


def smollm2_shaped(cache: Path, layers: int = 4) -> str:
    """A randomly initialised model of SmolLM2-135M's shape (built once, cached)."""
    path = cache / f"smollm2-shape-{layers}l"
    if not (path / "config.json").exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **SMOLLM2_SHAPE)).save_pretrained(path)
    return str(path)


def random_groups(count: int, size: int, prompt: int, response: int, vocab: int, seed: int = 0):
    """`count` groups of `size` samples with fixed lengths and half the rewards correct."""
    import torch

    from learner.training.advantages import GroupAdvantage, grpo
    from learner.training.groups import Group

    gen = torch.Generator().manual_seed(seed)
    rewards = torch.tensor([float(j % 2) for j in range(size)])
    return [Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0 + 0.02 * (i % 10),
                  prompt=torch.randint(3, vocab, (prompt,), generator=gen),
                  responses=[torch.randint(3, vocab, (response,), generator=gen) for _ in range(size)],
                  behaviour_logprobs=[-torch.rand(response, generator=gen) for _ in range(size)],
                  rewards=rewards, version_first=0, version_last=0, advantage=GroupAdvantage(grpo(rewards)))
            for i in range(count)]


def bench_step_ratio(cfg, model_path: str, trials: int = 3) -> dict:
    import torch

    from learner.training.trainer import Trainer
    from learner.training.batch import build_batch

    budget = 2048
    r = msgspec.structs.replace
    c = r(cfg, learner=r(cfg.learner, micro_batch_tokens=budget, logit_chunk_tokens=budget),
          generator=r(cfg.generator, max_tokens=96))
    trainer = Trainer.from_config(c, model_path)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    groups = random_groups(8, 8, 32, 96, trainer.model.config.vocab_size)  # 64 samples, 8192 tokens
    batch = build_batch(groups, 0, trainer.pad_id)
    micro = trainer.micro_batches(batch, torch.arange(len(batch.group)))
    tokens = int(batch.attention_mask.sum())

    def learner_step(chunk):
        def run():
            trainer.model.load_state_dict(state)
            trainer.lc = r(c.learner, logit_chunk_tokens=chunk)
            trainer.step(groups)
        return run

    def plain_step():  # what a plain fine-tuning step does with the same micro-batches
        trainer.model.load_state_dict(state)
        trainer.optimizer.zero_grad(set_to_none=True)
        for mb in micro:
            sub = batch.select(mb)
            labels = sub.input_ids.masked_fill(sub.attention_mask == 0, -100)
            labels[:, 1:] = labels[:, 1:].masked_fill(sub.response_mask == 0, -100)
            labels[:, 0] = -100
            out = trainer.model(input_ids=sub.input_ids, attention_mask=sub.attention_mask, labels=labels)
            (out.loss * len(mb) / len(batch.group)).backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()

    t_learner, t_plain, t_chunked = [], [], []
    for _ in range(trials):  # interleaved, so drift in machine load hits all alike
        t_plain.append(median_time(plain_step, 1, warmup=0))
        t_learner.append(median_time(learner_step(budget), 1, warmup=0))
        t_chunked.append(median_time(learner_step(256), 1, warmup=0))
    learner, plain, chunked = (statistics.median(t) for t in (t_learner, t_plain, t_chunked))
    return {"learner_tok_s": tokens / learner, "plain_tok_s": tokens / plain, "chunked_tok_s": tokens / chunked,
            "step_ratio": plain / learner, "chunked_step_ratio": plain / chunked}


RESPONSES = ROOT.parent / "shared" / "data" / "responses" / "smollm2-135m-instruct-gsm8k.jsonl"
GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def response_groups(vocab: int, seed: int = 0):
    """Groups of 4 with the token lengths of SmolLM2's own GSM8K responses (their `tokens` field) and
    prompts of about their chat-templated length (question characters / 4 + 30 template tokens: an
    estimate, as no tokenizer ships with the data); token ids random."""
    import collections

    import torch

    from learner.training.advantages import GroupAdvantage, grpo
    from learner.training.groups import Group

    questions = {row["id"]: row["problem"] for row in map(json.loads, GSM8K_TEST.read_text().splitlines()[:40])}
    lengths = collections.defaultdict(list)
    for line in RESPONSES.read_text().splitlines():
        row = json.loads(line)
        lengths[row["id"]].append(int(row["tokens"]))
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for i, (pid, lens) in enumerate(sorted(lengths.items())):
        rewards = torch.tensor([float(j % 2) for j in range(len(lens))])
        groups.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0,
                            prompt=torch.randint(3, vocab, (len(questions[pid]) // 4 + 30,), generator=gen),
                            responses=[torch.randint(3, vocab, (n,), generator=gen) for n in lens],
                            behaviour_logprobs=[-torch.rand(n, generator=gen) for n in lens], rewards=rewards,
                            version_first=0, version_last=0, advantage=GroupAdvantage(grpo(rewards))))
    return groups


def bench_packing(cfg, model_path: str, trials: int = 3, budget: int = 2048) -> dict:
    import torch

    from learner.training.trainer import Trainer
    from learner.training.batch import build_batch

    r = msgspec.structs.replace
    c = r(cfg, learner=r(cfg.learner, micro_batch_tokens=budget, logit_chunk_tokens=budget),
          generator=r(cfg.generator, max_tokens=256))
    trainer = Trainer.from_config(c, model_path)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    groups = response_groups(trainer.model.config.vocab_size)
    batch = build_batch(groups, 0, trainer.pad_id)
    tokens = int(batch.attention_mask.sum())
    padding = {}

    def learner_step(packing: bool):
        def run():
            trainer.model.load_state_dict(state)
            trainer.lc = r(c.learner, packing=packing)
            padding[packing] = trainer.step(groups).metrics["padding_frac"]
        return run

    def one_by_one():  # a plain transformers fine-tuning step on each sample alone: no padding at all
        trainer.model.load_state_dict(state)
        trainer.optimizer.zero_grad(set_to_none=True)
        for g in groups:
            for resp in g.responses:
                ids = torch.cat([g.prompt, resp])[None]
                labels = ids.clone()
                labels[0, :len(g.prompt)] = -100
                (trainer.model(input_ids=ids, labels=labels).loss / len(batch.group)).backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()

    t_packed, t_padded, t_plain = [], [], []
    for _ in range(trials):  # interleaved, so drift in machine load hits all alike
        t_padded.append(median_time(learner_step(False), 1, warmup=0))
        t_packed.append(median_time(learner_step(True), 1, warmup=0))
        t_plain.append(median_time(one_by_one, 1, warmup=0))
    packed, padded, plain = (statistics.median(t) for t in (t_packed, t_padded, t_plain))
    return {"samples": len(batch.group), "tokens": tokens, "packed_tok_s": tokens / packed,
            "padded_tok_s": tokens / padded, "plain_tok_s_1x1": tokens / plain, "packed_speedup": padded / packed,
            "packed_ratio": plain / packed, "padding_frac": padding[False], "packed_padding_frac": padding[True]}


def step_peak_memory(model_path: str, scale: int, budget: int, chunk: int = 256) -> int:
    """KB a learner step adds to a fresh process's peak RSS, on 4 x `scale` groups of 4 samples of
    16 + 48 tokens. Large blocks come straight from mmap (MALLOC_MMAP_THRESHOLD_), so that freed
    activations leave the process; with glibc's adaptive threshold the peak would count them again."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-m", "benchmarks.learner", model_path, str(scale), str(budget), str(chunk)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["peak_kb"] - r["base_kb"]


def _memory_child(model_path: str, scale: int, budget: int, chunk: int) -> None:
    import resource

    import torch

    from learner.training.trainer import Trainer
    from pipeline.config import from_dict

    torch.set_num_threads(1)
    cfg = from_dict({"learner": {"micro_batch_tokens": budget, "logit_chunk_tokens": chunk,
                                 "groups_per_step": 4 * scale}, "generator": {"max_tokens": 48}})
    trainer = Trainer.from_config(cfg, model_path)
    groups = random_groups(4 * scale, 4, 16, 48, trainer.model.config.vocab_size)
    try:  # Linux: reset the peak (VmHWM) to the current RSS, so loading the model does not count
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer.step(groups)
    peak = _status_kb("VmHWM") if Path("/proc/self/status").exists() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kb": peak, "base_kb": base}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def bench_memory_growth(model_path: str) -> dict:
    peaks = [step_peak_memory(model_path, scale, 1024) for scale in (1, 4, 16)]
    return {"peaks_kb": peaks, "memory_growth": peaks[-1] / peaks[0],
            "one_piece_kb": step_peak_memory(model_path, 16, 0)}


def bench_loss_overhead(cfg, model_path: str, trials: int = 20, quiet: bool = False) -> dict:
    """One optimiser step with the lag-corrected loss (tis) at per-sample temperatures, beside the same
    step with plain GRPO's clipped loss at T = 1, on the same batch and the same starting weights."""
    import copy

    import torch

    from learner.training.advantages import GroupAdvantage, grpo
    from learner.training.groups import Group
    from learner.training.trainer import Trainer

    torch.manual_seed(0)
    lc = cfg.learner
    trainer = Trainer.from_config(cfg, model_path)
    vocab = trainer.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    groups = []
    for i in range(lc.groups_per_step):
        responses = [torch.randint(3, vocab, (int(torch.randint(2, cfg.generator.max_tokens + 1, (1,), generator=gen)),),
                                   generator=gen) for _ in range(lc.group_size)]
        groups.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0 + 0.02 * (i % 10),
                            prompt=torch.randint(3, vocab, (18,), generator=gen), responses=responses,
                            behaviour_logprobs=[-torch.rand(len(r), generator=gen) for r in responses],
                            rewards=torch.tensor([float(j % 2) for j in range(lc.group_size)]),
                            version_first=0, version_last=0))
        groups[-1].advantage = GroupAdvantage(grpo(groups[-1].rewards))
    state = copy.deepcopy(trainer.model.state_dict())
    plain_loss = msgspec.structs.replace(cfg.loss, correction="ppo_behaviour", logprob_temperature="one")

    def step(loss):
        def run():
            trainer.model.load_state_dict(state)
            trainer.loss = loss
            trainer.step(groups)
        return run

    # interleave the two so drift in machine load hits both alike
    t_tis, t_plain = [], []
    for _ in range(trials):
        t_plain.append(median_time(step(plain_loss), 1, warmup=0))
        t_tis.append(median_time(step(cfg.loss), 1, warmup=0))
    tis, plain = statistics.median(t_tis), statistics.median(t_plain)
    out = {"tis_step_s": tis, "plain_step_s": plain, "overhead": tis / plain}
    if quiet:
        return out
    print_table([
        ("batch", f"{lc.groups_per_step} groups x {lc.group_size} samples"),
        ("step, tis + per-sample T", f"{tis * 1000:.1f} ms"),
        ("step, plain GRPO clip at T = 1", f"{plain * 1000:.1f} ms"),
    ])
    print(f"RESULT overhead={out['overhead']:.3f}")
    return out


if __name__ == "__main__":  # the child process of `step_peak_memory`
    sys.path.insert(0, str(ROOT))
    _memory_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))

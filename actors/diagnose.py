"""`run.py diagnose`: ERPO's temperature diagnostic (docs/algorithms.md §2). Can a model's residual
prompts be reactivated by sampling hotter, and at what cost?

1. Sample `n` responses to each training prompt at `schedule.t0`; the residual prompts are those
   whose every response is correct (a GRPO group with no signal).
2. Sample the residual prompts again, `n` each, at each temperature of a ladder.
3. Per temperature: the share of residual prompts that come back mixed (reactivated: a group with
   signal again), the share of wrong responses (the cost), and the mean response length.

Run it on a checkpoint before spending a study on a task: a task whose residual prompts never come
back mixed gives ERPO nothing to work with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

from actors.engine import Engine, Request
from actors.reward import Verifier
from pipeline.config import Config, GeneratorSettings
from pipeline.data import load_problems
from pipeline.problems import Problem
from pipeline.model_settings import derive
from pipeline.prompts import render
from pipeline.scoring import correct


@dataclass
class Rung:
    temperature: float
    prompts: int  # residual prompts sampled
    reactivated: float  # share of them whose group came back mixed
    wrong: float  # share of wrong responses
    mean_tokens: float  # mean response length


def _sample(engine, verifier, cfg: Config, problems: list[Problem], temperature: float, n: int, seed: int,
            records, label: str, batch_size: int, progress) -> list[tuple[list[bool], list[int]]]:
    """Each problem's `n` responses at `temperature`: (correct or not, length in tokens) of each;
    every group is recorded under `label`."""
    out = []
    max_tokens = cfg.generator.max_tokens
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [render(engine.tokenizer, p.question, cfg.data) for p in chunk]
        groups = engine.generate([Request(ids, n, temperature, max_tokens, seed + (start + i) * n)
                                  for i, ids in enumerate(prompts)])
        for p, group in zip(chunk, groups):
            texts = [engine.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in group]
            scored = verifier.score(p.verifier, texts, p.answer, p.metadata, [c.finish_reason == "length" for c in group])
            right, lengths = [correct(r) for r, _ in scored], [len(c.tokens) for c in group]
            out.append((right, lengths))
            records.write(msgspec.json.encode({"pass": label, "temperature": temperature, "problem": p.prompt_id,
                                               "correct": right, "tokens": lengths}) + b"\n")
        progress.update(len(chunk))
    return out


def rung(temperature: float, groups: list[tuple[list[bool], list[int]]]) -> Rung:
    """The figures of one temperature from its groups (each: correct or not, and length, per response)."""
    responses = [(ok, length) for right, lengths in groups for ok, length in zip(right, lengths)]
    return Rung(temperature, len(groups),
                reactivated=sum(0 < sum(right) < len(right) for right, _ in groups) / max(len(groups), 1),
                wrong=sum(not ok for ok, _ in responses) / max(len(responses), 1),
                mean_tokens=sum(length for _, length in responses) / max(len(responses), 1))


@dataclass
class Diagnosis:
    prompts: int  # training prompts looked at
    residual: int  # of them, residual at T0
    rungs: list[Rung]  # one per temperature of the ladder

    def table(self) -> str:
        return "\n".join([
            f"{self.residual} of {self.prompts} prompts are residual at T0 (every response correct)",
            "    T   reactivated   wrong   mean tokens",
            *(f"{r.temperature:5.2f}   {r.reactivated:11.3f}   {r.wrong:5.3f}   {r.mean_tokens:11.1f}" for r in self.rungs)])


def diagnose(cfg: Config, model_path: str, temperatures: list[float], n: int, prompts: int, out_dir: Path,
             progress: bool = True, batch_size: int = 64) -> Diagnosis:
    """The diagnostic over the first `prompts` training prompts; writes diagnose.json, diagnose.png and
    every group's outcome (diagnose.groups.jsonl) to `out_dir`."""
    from tqdm import tqdm

    if n < 2:
        raise ValueError(f"--samples must be at least 2 (got {n}): a group of one can be neither residual nor mixed")
    cfg, settings = derive(cfg, model_path, sequences=batch_size * n)
    print(settings.block())
    problems = load_problems(cfg.data)[:prompts]
    engine = Engine(GeneratorSettings.of(cfg), model_path, seed=cfg.run.seed)
    verifier = Verifier(cfg.generator.verifier_timeout_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = cfg.schedule.t0
    rungs = []
    try:
        with (out_dir / "diagnose.groups.jsonl").open("wb") as records, \
                tqdm(total=len(problems), desc=f"residual prompts at T0 = {t0}", disable=not progress) as bar:
            base = _sample(engine, verifier, cfg, problems, t0, n, cfg.run.seed, records, "t0", batch_size, bar)
            residual = [p for p, (right, _) in zip(problems, base) if all(right)]
            for k, temperature in enumerate(temperatures):
                bar.reset(total=len(residual))
                bar.set_description(f"{len(residual)} residual prompts at T = {temperature}")
                groups = _sample(engine, verifier, cfg, residual, temperature, n, cfg.run.seed + 7919 * (k + 1),
                                 records, "ladder", batch_size, bar)
                rungs.append(rung(temperature, groups))
    finally:
        verifier.close()
    (out_dir / "diagnose.json").write_bytes(msgspec.json.format(msgspec.json.encode({
        "model": model_path, "t0": t0, "samples": n, "prompts": len(problems), "residual": len(residual),
        "rungs": [asdict(r) for r in rungs]}), indent=2))
    _plot(rungs, len(residual), len(problems), t0, out_dir / "diagnose.png")
    return Diagnosis(len(problems), len(residual), rungs)


def _plot(rungs: list[Rung], residual: int, prompts: int, t0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 4))
    temps = [r.temperature for r in rungs]
    left.plot(temps, [r.reactivated for r in rungs], "o-", label="reactivated (mixed groups)")
    left.plot(temps, [r.wrong for r in rungs], "s--", label="wrong responses")
    left.set_xlabel("sampling temperature")
    left.set_ylabel("share")
    left.set_ylim(0, 1)
    right = left.twinx()
    right.plot(temps, [r.mean_tokens for r in rungs], "^:", color="grey", label="mean tokens")
    right.set_ylabel("mean response tokens")
    left.set_title(f"{residual} of {prompts} prompts residual at T0 = {t0}")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

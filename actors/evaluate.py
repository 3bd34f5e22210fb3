"""`run.py eval`: k samples per problem through a vLLM engine, scored by the same verifiers as training."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from actors.engine import Engine, Request
from actors.reward import Verifier
from pipeline.config import Config
from pipeline.data import heldout_problems
from pipeline.scoring import DatasetScore, score, table


def evaluate(cfg: Config, model_path: str, datasets: list[str], out_json: Path, progress: bool = True,
             batch_size: int = 64) -> list[DatasetScore]:
    from tqdm import tqdm

    engine = Engine(cfg, model_path, seed=cfg.run.seed)
    verifier = Verifier(cfg.generator.verifier_timeout_s)
    ev = cfg.eval
    max_tokens = ev.max_tokens or cfg.generator.max_tokens
    scores = []
    try:
        for name in datasets:
            source, problems = heldout_problems(cfg.data, ev, source=name)
            rewards: list[list[float]] = []
            too_long = 0
            t0 = time.monotonic()
            with tqdm(total=len(problems), desc=f"eval {source}", disable=not progress) as bar:
                for start in range(0, len(problems), batch_size):
                    chunk = problems[start:start + batch_size]
                    prompts = [engine.tokenizer.encode(cfg.data.prompt_template.format(question=p.question))
                               for p in chunk]
                    fits = [len(ids) + max_tokens <= engine.max_model_len for ids in prompts]
                    too_long += fits.count(False)
                    outs = iter(engine.generate([Request(ids, ev.k, ev.temperature, max_tokens)
                                                 for ids, ok in zip(prompts, fits) if ok]))
                    for p, ok in zip(chunk, fits):
                        if not ok:
                            rewards.append([0.0] * ev.k)
                            continue
                        texts = [engine.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in next(outs)]
                        rewards.append([r for r, _ in verifier.score(p.verifier, texts, p.answer, p.metadata)])
                    bar.update(len(chunk))
            s = score(source, rewards, too_long)
            scores.append(s)
            print(f"{source}: mean@{s.k} {s.mean_at_k:.4f}  pass@{s.k} {s.pass_at_k:.4f}  "
                  f"({len(problems)} problems, {too_long} too long for the model, {time.monotonic() - t0:.1f}s)")
    finally:
        verifier.close()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_bytes(msgspec.json.format(msgspec.json.encode(
        {"model": model_path, "k": ev.k, "temperature": ev.temperature, "scores": scores}), indent=2))
    print(table(scores))
    return scores

"""`run.py eval`: k samples per problem through a vLLM engine, scored by the same verifiers as training."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from actors.answers import extract_answer
from actors.engine import Engine, Request
from pipeline.config import GeneratorSettings
from actors.reward import Verifier
from pipeline.config import Config
from pipeline.data import heldout_problems
from pipeline.model_settings import derive
from pipeline.model_settings import write as write_settings
from pipeline.scoring import DatasetScore, score, table
from pipeline.prompts import render


def _extracted(verifier: str, response: str, truncated: bool) -> tuple[str | None, str]:
    if verifier == "math" or verifier.startswith("math:"):
        return extract_answer(response, verifier.split(":", 1)[1] if ":" in verifier else "boxed", truncated)
    if "@" in verifier:
        return extract_answer(response, verifier.rsplit("@", 1)[1], truncated)
    return response.strip() or None, "whole"  # reasoning-gym scorers read the whole response


def evaluate(cfg: Config, model_path: str, datasets: list[str], out_json: Path, progress: bool = True,
             batch_size: int = 64) -> list[DatasetScore]:
    """mean@k / pass@k per dataset into `out_json`, and every sampled response (with its extracted
    answer, the gold answer and its reward) into the JSONL file beside it, so a score can be audited."""
    from tqdm import tqdm

    cfg, settings = derive(cfg, model_path, sequences=batch_size * cfg.eval.k)  # lengths, template, cache
    print(settings.block())
    write_settings(settings, out_json.with_suffix(".model_settings.json"))
    engine = Engine(GeneratorSettings.of(cfg), model_path, seed=cfg.run.seed)
    verifier = Verifier(cfg.generator.verifier_timeout_s)
    ev = cfg.eval
    max_tokens = ev.max_tokens or cfg.generator.max_tokens
    scores = []
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_jsonl = out_json.with_suffix(".responses.jsonl")
    try:
        with out_jsonl.open("wb") as records:
            for name in datasets:
                source, problems = heldout_problems(cfg.data, ev, source=name)
                rewards: list[list[float]] = []
                too_long: list[int] = []
                t0 = time.monotonic()
                with tqdm(total=len(problems), desc=f"eval {source}", disable=not progress) as bar:
                    for start in range(0, len(problems), batch_size):
                        chunk = problems[start:start + batch_size]
                        prompts = [render(engine.tokenizer, p.question, cfg.data) for p in chunk]
                        fits = [len(ids) + max_tokens <= engine.max_model_len for ids in prompts]
                        outs = iter(engine.generate([Request(ids, ev.k, ev.temperature, max_tokens)
                                                     for ids, ok in zip(prompts, fits) if ok]))
                        for p, ok in zip(chunk, fits):
                            if not ok:
                                too_long.append(p.prompt_id)
                                rewards.append([0.0] * ev.k)
                                continue
                            group = next(outs)
                            texts = [engine.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in group]
                            cut = [c.finish_reason == "length" for c in group]
                            scored = verifier.score(p.verifier, texts, p.answer, p.metadata, cut)
                            rewards.append([r for r, _ in scored])
                            for j, (c, text, (reward, status)) in enumerate(zip(group, texts, scored)):
                                answer, how = _extracted(p.verifier, text, cut[j])
                                records.write(msgspec.json.encode({
                                    "dataset": source, "problem": p.prompt_id, "sample": j, "question": p.question,
                                    "gold": p.answer, "response": text, "extracted": answer, "extracted_from": how,
                                    "reward": reward, "status": status, "finish_reason": c.finish_reason,
                                    "tokens": len(c.tokens)}) + b"\n")
                        bar.update(len(chunk))
                        bar.set_postfix(mean=f"{sum(map(sum, rewards)) / (len(rewards) * ev.k):.3f}")
                s = score(source, rewards, len(too_long))
                scores.append(s)
                print(f"{source}: mean@{s.k} {s.mean_at_k:.4f}  pass@{s.k} {s.pass_at_k:.4f}  "
                      f"({len(problems)} problems, {time.monotonic() - t0:.1f}s)")
                if too_long:
                    print(f"{source}: {len(too_long)} prompts do not fit the model's context "
                          f"({engine.max_model_len} tokens with {max_tokens} to generate; scored 0): "
                          f"problems {too_long[:20]}{' ...' if len(too_long) > 20 else ''}")
    finally:
        verifier.close()
    out_json.write_bytes(msgspec.json.format(msgspec.json.encode(
        {"model": model_path, "k": ev.k, "temperature": ev.temperature, "scores": scores,
         "responses": str(out_jsonl)}), indent=2))
    print(table(scores))
    print(f"every response, its extracted and gold answers and reward: {out_jsonl}")
    return scores

"""Reward verification: math-verify in a process pool with a timeout, reasoning-gym scorers in-process.

math-verify uses `signal.alarm` for its own time limit, which only works in a main thread, and a
pathological expression can still hang sympy; so it runs in a separate process that we kill and
replace when it overruns. reasoning-gym scorers are small pure functions and run inline.
Rewards are binary {0, 1}: a partial-credit score counts as wrong.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing as mp
from dataclasses import dataclass, field

from actors.answers import extract_answer, gold_answer
from pipeline.scoring import correct

log = logging.getLogger(__name__)


def _math_verify_batch(items: list[tuple[str, str, str, bool]]) -> list[tuple[float, str]]:
    """(response, gold answer, answer style, truncated) -> (reward, status). The final answer is
    extracted first (actors/answers.py); math-verify then compares it, and only it, with the gold."""
    from math_verify import parse, verify

    out = []
    for response, answer, style, truncated in items:
        try:
            extracted, _ = extract_answer(response, style, truncated)
            pred = parse(f"\\boxed{{{extracted}}}") if extracted is not None else []
            if not pred:
                out.append((0.0, "unparsable"))
                continue
            gold = parse(f"\\boxed{{{gold_answer(answer)}}}")
            out.append((1.0 if verify(gold, pred) else 0.0, "ok"))
        except Exception:  # noqa: BLE001 - a verifier error is a wrong answer, recorded as such
            out.append((0.0, "error"))
    return out


@dataclass
class Verifier:
    timeout_s: float
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "timeout": 0, "error": 0, "unparsable": 0})
    _pool: cf.ProcessPoolExecutor | None = None
    _scorers: dict = field(default_factory=dict)

    def score(self, verifier: str, responses: list[str], answer: str, metadata: str,
              truncated: list[bool] | None = None) -> list[tuple[float, str]]:
        """(reward, status) per response; status is ok | timeout | error | unparsable (no final answer).
        `verifier`: "math" (answer style boxed), "math:<style>" (actors/answers.py), or
        "reasoning_gym:<task>[@<style>]". `truncated`: which responses were cut at max_tokens."""
        truncated = truncated or [False] * len(responses)
        if verifier == "math" or verifier.startswith("math:"):
            style = verifier.split(":", 1)[1] if ":" in verifier else "boxed"
            results = self._math(responses, answer, style, truncated)
        elif verifier.startswith("reasoning_gym:"):
            task, _, style = verifier.split(":", 1)[1].partition("@")
            if style:  # "reasoning_gym:<task>@<style>": the scorer sees the extracted final answer
                responses = [extract_answer(r, style, t)[0] or "" for r, t in zip(responses, truncated)]
            results = self._reasoning_gym(task, responses, answer, metadata)
        else:
            results = [(0.0, "error")] * len(responses)
            log.warning("unknown verifier %r: rewards set to 0", verifier)
        for _, status in results:
            self.counts[status] += 1
        return results

    def _reasoning_gym(self, task: str, responses: list[str], answer: str, metadata: str):
        import reasoning_gym

        fn = self._scorers.get(task)
        if fn is None:
            fn = self._scorers[task] = reasoning_gym.get_score_answer_fn(task)
        entry = {"answer": answer, "metadata": json.loads(metadata)}
        out = []
        for r in responses:
            text = r.strip()
            if not text:
                out.append((0.0, "unparsable"))
                continue
            try:
                out.append((1.0 if correct(fn(text, entry)) else 0.0, "ok"))
            except Exception:  # noqa: BLE001
                out.append((0.0, "error"))
        return out

    def _math(self, responses: list[str], answer: str, style: str, truncated: list[bool]):
        if self._pool is None:
            # spawn: a fork of a process holding vLLM and torch threads is not safe
            self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        future = self._pool.submit(_math_verify_batch, [(r, answer, style, t) for r, t in zip(responses, truncated)])
        try:
            return future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            log.warning("math-verify exceeded %.1fs; rewards 0 and the verifier process is replaced",
                        self.timeout_s)
            self._kill_pool()
            return [(0.0, "timeout")] * len(responses)
        except cf.process.BrokenProcessPool:
            self._kill_pool()
            return [(0.0, "error")] * len(responses)

    def _kill_pool(self) -> None:
        if self._pool is None:
            return
        for p in list(getattr(self._pool, "_processes", {}).values()):
            p.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        self._kill_pool()

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

log = logging.getLogger(__name__)


def _math_verify_batch(items: list[tuple[str, str]]) -> list[tuple[float, str]]:
    from math_verify import parse, verify

    out = []
    for response, answer in items:
        try:
            gold = parse(f"\\boxed{{{answer}}}")
            pred = parse(response)
            if not pred:
                out.append((0.0, "unparsable"))
                continue
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

    def score(self, verifier: str, responses: list[str], answer: str, metadata: str) -> list[tuple[float, str]]:
        """(reward, status) per response; status is ok | timeout | error | unparsable."""
        if verifier == "math":
            results = self._math(responses, answer)
        elif verifier.startswith("reasoning_gym:"):
            results = self._reasoning_gym(verifier.split(":", 1)[1], responses, answer, metadata)
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
                out.append((1.0 if fn(text, entry) >= 1.0 else 0.0, "ok"))
            except Exception:  # noqa: BLE001
                out.append((0.0, "error"))
        return out

    def _math(self, responses: list[str], answer: str):
        if self._pool is None:
            # spawn: a fork of a process holding vLLM and torch threads is not safe
            self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        future = self._pool.submit(_math_verify_batch, [(r, answer) for r in responses])
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

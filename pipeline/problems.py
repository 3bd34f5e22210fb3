"""A training or held-out problem: what a prompt visit leases and a verifier checks. A module of its
own, so that the data sources (pipeline/data.py, pipeline/traces.py) both make problems without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    prompt_id: int
    question: str
    answer: str
    verifier: str  # "math" (math-verify) or "reasoning_gym:<task>"
    metadata: str = "{}"  # JSON, what the verifier needs besides the answer

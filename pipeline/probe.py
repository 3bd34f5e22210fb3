"""The probe: a fixed token sequence that the learner and every generator score, so the learner can
check that a generator really holds the weights it was sent (and a resumed run, that its checkpoint
loaded). Comparing log-probs, not raw tensors, is layout-proof: vLLM fuses q/k/v and on CPU repacks
linear weights. Both sides import this module; the learner's record of what each version should
score is `learner/weights/publisher.py`'s.
"""

from __future__ import annotations

# How far two probe answers may differ for the same weights. In bf16 the two sides differ in kernels
# and summation order (and the learner may run bf16-mixed against the engine's pure bf16): a bf16
# logit holds ~3 significant digits, and on a trained model's peaked distributions a log-prob moves
# by up to ~0.1-0.2 nats for the same weights (tests/gpu already allows 0.1 on a random model's
# flat ones). So bf16 catches a load that garbled or skipped most weights, not one optimiser step at
# a small learning rate; fp32 (the CPU default) catches both.
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 5e-2}


def probe_tokens(vocab_size: int, length: int = 16) -> list[int]:
    """The sequence both sides score."""
    return [(7 * i + 3) % vocab_size for i in range(length)]


def probe_matches(reported: list[float], expected: list[float], dtype: str,
                  tolerance: dict[str, float] = PROBE_TOLERANCE) -> tuple[bool, float]:
    """(match, largest difference) of probe log-probs (a generator's, or a reloaded checkpoint's)
    against the learner's, within `tolerance[dtype]`."""
    diff = max((abs(a - b) for a, b in zip(reported, expected)), default=0.0)
    return len(reported) == len(expected) and diff <= tolerance[dtype], diff

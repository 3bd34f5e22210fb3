"""The probe: a fixed token sequence that the learner and every generator score, so the learner can
check that a generator really holds the weights it was sent (and a resumed run, that its checkpoint
loaded). Comparing log-probs, not raw tensors, is layout-proof: vLLM fuses q/k/v and on CPU repacks
linear weights. Both sides import this module; the learner's record of what each version should
score is `learner/weights/publisher.py`'s.
"""

from __future__ import annotations

# How far two probe answers (log-probs, in nats) may differ for the same weights, argued from the
# arithmetic on each side (docs/gpu.md, "Probe tolerances"):
# - float32 on CPU: both sides compute in fp32 with fp32 accumulation; only summation order differs,
#   ~1e-6 relative on logits of magnitude ~10-30, so 1e-3 leaves a wide margin and still catches a
#   single optimiser step (tests/real: one step of SmolLM2 moves the probe far more).
# - float32 on a GPU: vLLM's attention runs through Triton kernels whose dots may use TF32 (a 10-bit
#   mantissa: 2^-11 ~ 4.9e-4 relative per product) while the learner's matmuls stay fp32; on logits
#   of magnitude ~20 that is ~1e-2 absolute, so 2e-2.
# - bfloat16: an 8-bit mantissa (2^-9 ~ 2e-3 relative). The learner runs bf16-mixed under autocast
#   (fp32 master weights cast per op, fp32 accumulation, an fp32 residual stream) against vLLM's pure
#   bf16, whose residual stream rounds at every layer: after L layers ~ sqrt(L) * 2e-3 of the residual
#   norm, ~0.1-0.2 nats on a trained model's peaked distributions. So 0.25: it catches a load that
#   garbled or skipped most weights, not one small optimiser step.
# - float16: a 10-bit mantissa, 4x finer than bf16: 5e-2.
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 5e-2}
PROBE_TOLERANCE_GPU = {**PROBE_TOLERANCE, "float32": 2e-2}


def probe_tokens(vocab_size: int, length: int = 16) -> list[int]:
    """The sequence both sides score."""
    return [(7 * i + 3) % vocab_size for i in range(length)]


def probe_matches(reported: list[float], expected: list[float], dtype: str,
                  tolerance: dict[str, float] = PROBE_TOLERANCE) -> tuple[bool, float]:
    """(match, largest difference) of probe log-probs (a generator's, or a reloaded checkpoint's)
    against the learner's, within `tolerance[dtype]`."""
    diff = max((abs(a - b) for a, b in zip(reported, expected)), default=0.0)
    return len(reported) == len(expected) and diff <= tolerance[dtype], diff

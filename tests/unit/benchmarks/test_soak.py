"""The soak benchmark's arithmetic: resident memory's drift as a least-squares slope per hour."""

import pytest

from benchmarks.soak import _slope_per_hour


def test_a_steady_leak_and_a_flat_line_with_noise():
    leak = [(t, 500.0 + 0.01 * t) for t in range(0, 3600, 10)]  # 0.01 MB/s
    assert _slope_per_hour(leak) == pytest.approx(36.0)
    flat = [(t, 500.0 + (3.0 if (t // 10) % 2 else -3.0)) for t in range(0, 3600, 10)]
    assert abs(_slope_per_hour(flat)) < 0.1
    assert _slope_per_hour([(0, 1.0), (10, 2.0)]) == 0.0  # too few points to fit

"""When a generator takes the weight updates it holds (actors/generator.py, `may_land`, which
`Generator._apply_updates` asks before each update): a wave leased under some version is sampled under
exactly that version (exact lag control), however many updates wait. The loop around it is tested end
to end in tests/e2e/test_generator.py and tests/e2e/test_exact_lag.py."""

import pytest

from actors.generator import may_land
from pipeline.messages import Assignment, WeightUpdate

pytestmark = pytest.mark.unit


def _lease(policy_version: int, wave_size: int = 2) -> Assignment:
    return Assignment(lease_id=1, prompt_id=1, epoch=0, temperature=1.0, n=4, policy_version=policy_version,
                      prompt_tokens=b"", answer="3", verifier="math", max_tokens=6, wave=5, wave_size=wave_size)


def _update(version: int) -> WeightUpdate:
    return WeightUpdate(version=version, info={})


def test_of_two_queued_updates_only_the_one_a_pending_wave_was_leased_under_lands():
    """A generator stopped for a while finds versions 14 and 15 queued behind a wave leased under
    14: it takes 14, and 15 waits until the wave has started."""
    pending = [_lease(14)]
    assert may_land(_update(14), pending, torn=False)
    assert not may_land(_update(15), pending, torn=False)
    assert may_land(_update(15), [], torn=False)  # the wave has started


def test_updates_land_when_no_wave_waits_for_older_weights_or_the_engine_is_torn():
    assert may_land(_update(15), [_lease(14, wave_size=0)], torn=False)  # not a wave
    assert may_land(_update(15), [_lease(13)], torn=True)  # nothing to keep

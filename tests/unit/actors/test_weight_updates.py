"""When a generator takes the weight updates it holds (actors/generator.py, `_apply_updates`): a wave
leased under some version is sampled under exactly that version (exact lag control), however many
updates wait. The generator's state is a test double here; the loop around it is tested end to end
in tests/e2e/test_generator.py and tests/e2e/test_exact_lag.py."""

from collections import deque
from types import SimpleNamespace

import pytest

from actors.generator import Generator
from pipeline.messages import Assignment, WeightUpdate

pytestmark = pytest.mark.unit


def _lease(policy_version: int, wave_size: int = 2) -> Assignment:
    return Assignment(lease_id=1, prompt_id=1, epoch=0, temperature=1.0, n=4, policy_version=policy_version,
                      prompt_tokens=b"", answer="3", verifier="math", max_tokens=6, wave=5, wave_size=wave_size)


class _GeneratorState(SimpleNamespace):
    """Test double: the fields `_apply_updates` reads, and a `_receive` that records each version."""

    def __init__(self, version: int, updates: list[int], pending: list[Assignment], torn: bool = False):
        super().__init__(cfg=SimpleNamespace(generator=SimpleNamespace(update_mode="drain")), id=0, version=version,
                         running={}, torn=torn, pending=deque(pending),
                         updates=deque(WeightUpdate(version=v, info={}) for v in updates), received=[])

    def _receive(self, update: WeightUpdate) -> None:
        self.received.append(update.version)
        self.version = update.version


def test_of_two_queued_updates_only_the_one_a_pending_wave_was_leased_under_lands():
    """A generator stopped for a while finds versions 14 and 15 queued behind a wave leased under
    14: it takes 14, and 15 waits until the wave has been sampled."""
    state = _GeneratorState(version=13, updates=[14, 15], pending=[_lease(14)])
    Generator._apply_updates(state)
    assert state.received == [14] and [u.version for u in state.updates] == [15]
    state.pending.clear()  # the wave has started
    Generator._apply_updates(state)
    assert state.received == [14, 15] and not state.updates


def test_updates_land_when_no_wave_waits_for_older_weights_or_the_engine_is_torn():
    plain = _GeneratorState(version=13, updates=[14, 15], pending=[_lease(14, wave_size=0)])  # not a wave
    Generator._apply_updates(plain)
    assert plain.received == [14, 15]
    torn = _GeneratorState(version=13, updates=[14, 15], pending=[_lease(13)], torn=True)  # nothing to keep
    Generator._apply_updates(torn)
    assert torn.received == [14, 15]

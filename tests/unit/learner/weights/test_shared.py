"""One weight group for the pool (learner/weights/shared.py): formed only between broadcasts, newcomers
let in without a broadcast of their own, a failed broadcast pinned on whoever held it up, and what
each member holds never over-counted."""

import time

import pytest

from learner.orchestration.liveness import Liveness
from learner.weights.links import Snapshot
from learner.weights.shared import SharedGroup
from pipeline.messages import Heartbeat
from tests.doubles import FormationLink

pytestmark = pytest.mark.unit

STALE_S = 5.0


def _pool():
    formed: list[FormationLink] = []

    def open_link(members):
        formed.append(FormationLink(members))
        return formed[-1]

    liveness = Liveness()
    pool = SharedGroup(open_link, liveness.silent_for, STALE_S)
    pool.liveness = liveness  # the test's handle on what the supervisor would write
    return pool, formed


def _beat(pool, gid, receiving=-1, at=None):
    """A heartbeat as the loop hands it on: the supervisor records when, then the group sees it."""
    at = time.monotonic() if at is None else at
    pool.liveness.heard(gid, at)
    pool.observe(Heartbeat(generator_id=gid, pid=1, status="updating", version=0, receiving=receiving), at)


def _send(pool, link, version):
    assert pool.behind(version) == [link]
    pool.submit(link, Snapshot(version, []))


def _three_sending(held: int, version: int):
    """Generators 0, 1, 2 (holding `held`) in a formed group that is sending them `version`."""
    pool, formed = _pool()
    for gid in (0, 1, 2):
        pool.join(gid, 1, held)
    pool.behind(held)
    formed[0].joined = True
    _send(pool, formed[0], version)
    return pool, formed


def test_newcomers_enter_between_broadcasts_and_a_late_one_is_sent_the_newest_version_at_once():
    pool, formed = _pool()
    pool.join(0, 1, 0)
    assert pool.behind(0) == [] and len(formed) == 1 and formed[0].members == {0: 1}
    pool.join(1, 2, 0)  # its two workers after generator 0's
    assert pool.behind(0) == [] and len(formed) == 1  # not while the formation is still forming
    formed[0].joined = True
    assert pool.behind(0) == [] and formed[1].members == {0: 1, 1: 2} and formed[0].closed
    formed[1].joined = True
    _send(pool, formed[1], 1)
    assert pool.handed(0) == pool.handed(1) == 1 and not pool.all_handed(1)  # being sent
    pool.join(2, 1, 0)  # a restarted generator at its start version, mid-broadcast
    assert pool.behind(1) == [] and len(formed) == 2  # never re-formed while a broadcast runs
    assert not pool.joined(2) and pool.handed(2) == 0
    formed[1].sending = None
    assert pool.behind(1) == [] and formed[2].members == {0: 1, 1: 2, 2: 1}  # re-formed once it is over
    assert formed[2].version == 0 and pool.handed(0) == 1  # the newest all members surely hold; 0 keeps its 1
    formed[2].joined = True
    _send(pool, formed[2], 1)  # the newest version, never one between: the others receive it again
    formed[2].sending = None
    assert pool.behind(1) == [] and pool.all_handed(1) and pool.held == {0: 1, 1: 1, 2: 1}


def test_a_broadcast_past_its_timeout_cuts_out_the_silent_and_the_absent_and_the_rest_get_it_in_a_new_group():
    pool, formed = _three_sending(3, 4)
    now = time.monotonic()
    _beat(pool, 0, receiving=4, at=now)  # receiving, and heard from: not to blame ...
    _beat(pool, 0, receiving=-1, at=now)  # ... even once its receive failed (a peer downstream died)
    _beat(pool, 1, receiving=-1, at=now)  # alive, but never came to receive (a long drain)
    _beat(pool, 2, receiving=4, at=now - 2 * STALE_S)  # stopped inside the transfer
    formed[0].error = TimeoutError("the broadcast of version 4 took over 10 s (weights.timeout_s)")
    assert pool.handed(0) == 3  # a failed broadcast hands nothing
    assert pool.failure(0, now) is None
    assert "never started receiving version 4" in str(pool.failure(1, now))
    assert "not heard from" in str(pool.failure(2, now))
    assert len(formed) == 2 and formed[1].members == {0: 1} and formed[1].version == 3  # re-formed at once
    assert not pool.joined(1) and not pool.joined(2) and pool.joined(0)
    formed[1].joined = True
    _send(pool, formed[1], 4)  # the version it was waiting for
    pool.leave(1)
    pool.leave(2)  # the supervisor ended them: their restarts join as newcomers
    assert pool.failure(1, now) is None and not pool.dirty  # they were no longer members


def test_a_failure_by_error_waits_for_the_dead_to_be_found_and_one_nobody_caused_re_forms_with_everyone():
    pool, formed = _three_sending(0, 1)
    now = time.monotonic()
    for gid in (0, 1):
        _beat(pool, gid, receiving=1, at=now)
    _beat(pool, 2, receiving=-1, at=now)  # still draining: late, but an error is not its doing
    formed[0].error = RuntimeError("Connection reset by peer")  # a member was killed mid-broadcast
    assert all(pool.failure(g, now) is None for g in (0, 1, 2)) and len(formed) == 1  # who? not known yet
    pool.leave(1)  # the supervisor found its process dead: re-formed at once without it
    assert pool.failure(0, now + 0.1) is None and formed[1].members == {0: 1, 2: 1}
    formed[1].joined = True
    _send(pool, formed[1], 1)
    formed[1].error = RuntimeError("transient")
    later = now + 100
    assert pool.failure(0, later) is None and len(formed) == 2  # first seen: wait for a culprit to show
    for gid in (0, 2):
        _beat(pool, gid, receiving=1, at=later + STALE_S)  # both still heard from: nobody to blame
    assert pool.failure(0, later + STALE_S + 1) is None and formed[2].members == {0: 1, 2: 1}


def test_a_member_whose_probe_differs_is_cut_out_and_a_leaver_re_forms_the_group_before_the_next_broadcast():
    pool, formed = _pool()
    for gid in (0, 1):
        pool.join(gid, 1, 0)
    pool.behind(0)
    formed[0].joined = True
    pool.cut(1, "its weights of version 0 differ from the learner's")
    assert "differ" in str(pool.failure(1, time.monotonic()))
    assert pool.behind(1) == [] and formed[1].members == {0: 1}
    formed[1].joined = True
    pool.join(2, 1, 0)
    pool.leave(0)  # the only member left: the next broadcast would wait for it
    assert pool.behind(0) == [] and formed[2].members == {2: 1}
    formed[2].joined = True
    pool.join(3, 1, 0)
    pool.behind(0)
    formed[3].joined = True
    _send(pool, formed[3], 1)
    pool.leave(3)  # gone cleanly mid-broadcast: the broadcast ends (or fails) before any re-form
    assert pool.behind(1) == [] and len(formed) == 4 and pool.handed(2) == 1
    formed[3].sending = None
    assert pool.behind(1) == [] and formed[4].members == {2: 1} and pool.handed(2) == 1  # it kept what it got

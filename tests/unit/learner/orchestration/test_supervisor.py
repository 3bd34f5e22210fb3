"""The supervisor: generators' heartbeats, their probe checks and rates, restarts and their cap."""

import pytest

from learner.orchestration.supervisor import Supervisor, SupervisorError
from pipeline.config import GeneratorConfig
from pipeline.messages import Alive, Heartbeat
from tests.doubles import RecordingMembership, RecordingSend, ScriptedLauncher


def _supervisor(**generator):
    send, gone = RecordingSend(), []
    sup = Supervisor(GeneratorConfig(**generator), send, lambda gid, why: gone.append((gid, why)),
                     weights=RecordingMembership())
    return sup, send, gone


def _beat(gid=0, status="ready"):
    return Heartbeat(generator_id=gid, status=status, version=0, pid=1)


def test_a_generator_whose_engine_is_up_joins_the_weights_once_and_leaves_them_when_gone():
    sup, send, gone = _supervisor(count=1)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    sup.on_heartbeat(_beat(3))  # a joiner by itself: its weight link opened, answered
    sup.on_heartbeat(_beat(3))
    assert sup.weights.joins == [3] and 3 in sup.joined and [type(m) for _, m in send.sent] == [Alive, Alive]
    assert sup.ready_weights() == {3: 0}
    sup.weights.failures[3] = RuntimeError("gloo: connection reset")  # its link failed: it is let go
    sup.check(launcher, now=sup.liveness.last_heard(3))
    assert 3 not in sup.joined and sup.weights.leaves == [3] and gone == [(3, "left")]


def test_a_generators_rate_counts_its_own_groups_only():
    sup, _, _ = _supervisor()
    sup.on_heartbeat(_beat(1))
    sup.count_group(1)
    sup.count_group(1)
    sup.count_group(2)  # never said hello (or was let go): nothing to count
    assert sup.generators[1].groups == 2 and 2 not in sup.generators


def _ready(sup, gid, now=None):
    sup.on_heartbeat(_beat(gid), now=now)


def test_a_generator_that_keeps_dying_young_backs_off_and_one_that_lived_restarts_at_once():
    sup, _, gone = _supervisor(count=1)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    _ready(sup, 0)
    t = sup.last_alive
    sup.lives[0].started = t - 10.0
    for backoff in (1.0, 2.0, 4.0, 8.0):  # it dies within a minute of each start: 1, 2, 4, 8 s
        launcher.exited[0] = 1
        sup.check(launcher, now=t)
        assert sup.lives[0].restart_at == t + backoff and len(launcher.started) == 1 + sup.restarts
        sup.check(launcher, now=t + backoff - 0.1)  # not before its back-off is over
        assert sup.lives[0].restart_at is not None
        t += backoff
        sup.check(launcher, now=t)
        assert sup.lives[0].restart_at is None and 0 not in sup.joined  # restarted; no word from it yet
        _ready(sup, 0, t)
        assert 0 in sup.joined  # its first heartbeat opened its weight link
    t += 120.0  # it lived two minutes: the next death restarts at once
    _ready(sup, 0, t)
    launcher.exited[0] = 1
    restarts = sup.restarts
    sup.check(launcher, now=t)
    assert sup.restarts == restarts + 1 and sup.lives[0].restart_at is None and not sup.cooling
    assert [gid for gid, _ in gone] == [0] * 5  # its leases were released at every death


def test_a_generator_past_its_hourly_budget_cools_down_for_growing_rests_and_the_others_go_on():
    sup, _, gone = _supervisor(count=2, max_restarts_per_hour=3, cooldown_s=[60.0, 300.0])
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.last_alive
    _ready(sup, 0, t)
    _ready(sup, 1, t)
    for death in range(4):
        t += 600.0  # it lived ten minutes each time: no back-off, but four deaths in the hour
        _ready(sup, 1, t)
        launcher.exited[0] = 9
        sup.check(launcher, now=t)
        if not sup.lives[0].cooling:
            _ready(sup, 0, t)
    assert "died 4 times in the last hour" in sup.cooling[0] and "exit code -9 (SIGKILL): RuntimeError" in sup.cooling[0]
    assert sup.expected == 1 and 0 not in sup.joined and "cooling down for 60s" in gone[-1][1]
    assert sup.health(t)[0].state == "cooling" and sup.health(t)[0].retry_in_s == 60.0
    started = len(launcher.started)
    sup.check(launcher, now=t + 59.0)  # still resting
    assert len(launcher.started) == started
    _ready(sup, 1, t + 60.0)
    sup.check(launcher, now=t + 60.0)  # tried again, with a fresh budget
    assert len(launcher.started) == started + 1 and not sup.cooling and sup.expected == 2
    for rest in (300.0, 300.0):  # now it cannot start: each rest in a row is the next, and the last repeats
        t = _die_until_cooling(sup, launcher, sup.lives[0].started + 5.0)
        assert sup.lives[0].restart_at == t + rest and "failed to start 3 times" in sup.cooling[0]
        sup.check(launcher, now=t + rest)
    assert not sup.cooling and sup.lives[0].cooldowns == 3


def _die_until_cooling(sup, launcher, t):
    """Generator 0 dies at `t` and then 5 s after each restart, never ready, until it cools down:
    returns when it did."""
    while True:
        launcher.exited[0] = 9
        sup.check(launcher, now=t)
        if sup.lives[0].cooling:
            return t
        t = sup.lives[0].restart_at
        sup.check(launcher, now=t)  # its back-off is over: restarted
        t += 5.0


def test_a_generator_that_cannot_start_cools_down_and_the_run_stops_if_none_ever_started():
    sup, _, _ = _supervisor(count=1, max_failed_starts=3, none_alive_timeout_s=1000)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.last_alive
    with pytest.raises(SupervisorError, match=r"no generator could start.*generator 0: failed to start 3 times in a "
                                              r"row.*exit code 3: RuntimeError: no engine for generator 0"):
        for _ in range(3):  # it dies before it ever said it was ready
            launcher.exited[0] = 3
            sup.check(launcher, now=t)
            t += 60.0
            sup.check(launcher, now=t)


def test_once_the_run_was_up_a_generator_that_cannot_start_only_cools_down_and_the_run_waits_for_it():
    sup, _, _ = _supervisor(count=1, max_failed_starts=2, none_alive_timeout_s=100, cooldown_s=[500.0])
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.last_alive
    _ready(sup, 0, t)
    t += 120.0
    for _ in range(3):  # a death after it was up, then two failed starts
        launcher.exited[0] = 3
        sup.check(launcher, now=t)
        t += 60.0
        sup.check(launcher, now=t)
    assert "failed to start 2 times in a row" in sup.cooling[0]
    sup.check(launcher, now=t + 400.0)  # none alive for longer than none_alive_timeout_s, but one will be tried
    assert sup.cooling and sup.lives[0].restart_at is not None


def test_the_last_word_of_a_generator_already_let_go_is_ignored():
    sup, send, _ = _supervisor()
    sup.on_heartbeat(_beat(4, status="stopping"))
    assert send.sent == [] and sup.generators == {}


def test_a_generator_loading_its_engine_gets_its_weight_group_only_once_up_and_is_watched_meanwhile():
    """A group opened at the first word would wait through the engine's load (minutes for a 7B model,
    beyond vLLM's NCCL rendezvous timeout); silence while loading still counts."""
    sup, _, gone = _supervisor(count=1, heartbeat_timeout_s=30)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.last_alive
    sup.on_heartbeat(_beat(0, status="starting"), now=t)
    assert 0 not in sup.joined and sup.generators[0].status == "starting"
    sup.check(launcher, now=t + 31)  # silent while loading: killed, then restarted
    assert launcher.killed == [0] and gone and gone[0][0] == 0
    sup.on_heartbeat(_beat(0, status="joining"), now=t + 40)
    assert 0 in sup.joined


def test_the_restart_budget_is_a_rate_over_the_last_hour_not_a_lifetime_count():
    """Deaths 25 minutes apart never put more than three in one hour: ten of them cool nothing down,
    where a count over the generator's lifetime would at the fourth."""
    sup, _, _ = _supervisor(count=1, max_restarts_per_hour=3)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.last_alive
    for death in range(10):
        t += 25 * 60.0
        _ready(sup, 0, t)  # up and heard from until it dies
        launcher.exited[0] = 9
        sup.check(launcher, now=t)
        assert not sup.cooling, f"cooled down at death {death + 1}"
        assert len(sup.lives[0].deaths) <= 3
    assert sup.restarts == 10


def test_a_start_that_hangs_while_beating_is_killed_at_start_timeout_s_as_a_failed_start():
    """A loading engine beats (actors/beacon.py), so silence cannot catch a hung load: the start's own
    bound does."""
    sup, _, _ = _supervisor(count=1, start_timeout_s=100, heartbeat_timeout_s=30)
    launcher = ScriptedLauncher()
    sup.start_all(launcher)
    t = sup.lives[0].started
    for at in (50.0, 99.0):
        sup.on_heartbeat(_beat(0, status="starting"), now=t + at)
        sup.check(launcher, now=t + at)
    assert launcher.killed == []  # still within its bound, and beating
    sup.on_heartbeat(_beat(0, status="starting"), now=t + 101)
    sup.check(launcher, now=t + 101)
    assert launcher.killed == [0] and sup.lives[0].failed_starts == 1 and sup.restarts == 1  # and started again

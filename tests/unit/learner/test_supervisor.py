"""The supervisor: generators' heartbeats, their probe checks and rates, restarts and their cap."""

import pytest

from learner.supervisor import Supervisor, SupervisorError
from pipeline.config import GeneratorConfig
from pipeline.messages import Alive, Heartbeat, Welcome
from tests.doubles import IdleLink, RecordingSend, ScriptedLauncher


def _supervisor(**generator):
    send, gone = RecordingSend(), []
    sup = Supervisor(GeneratorConfig(**generator), "127.0.0.1", 0.5, "gloo", send,
                     lambda gid, why: gone.append((gid, why)), initial_version=0, link=IdleLink)
    return sup, send, gone


def _beat(gid=0, status="ready", probe_version=-1, probe=()):
    return Heartbeat(generator_id=gid, status=status, version=max(probe_version, 0), pid=1, inflight=0,
                     probe_version=probe_version, probe_logprobs=list(probe))


def test_each_reported_probe_is_verified_once_and_recorded_by_the_supervisor():
    sup, send, _ = _supervisor()
    calls = []

    def verify(gid, version, probe):
        calls.append((gid, version))
        return version != 7 if version < 9 else None  # 9: the learner has no probe of that version

    try:
        sup.on_heartbeat(_beat(3), verify)  # a joiner: welcomed, answered, no probe yet
        assert [type(m) for _, m in send.sent] == [Welcome, Alive]
        for v in (5, 5, 7, 9, 9):
            sup.on_heartbeat(_beat(3, probe_version=v, probe=[-1.0]), verify)
        assert calls == [(3, 5), (3, 7), (3, 9), (3, 9)]  # 9 stays unchecked until it can be compared
        assert sup.generators[3].checked == 7
    finally:
        sup.close()


def test_a_generators_rate_counts_its_own_groups_only():
    sup, _, _ = _supervisor()
    try:
        sup.on_heartbeat(_beat(1), lambda *a: None)
        sup.count_group(1)
        sup.count_group(1)
        sup.count_group(2)  # never said hello (or was let go): nothing to count
        assert sup.generators[1].groups == 2 and 2 not in sup.generators
    finally:
        sup.close()


def test_a_dead_generator_is_restarted_its_leases_released_until_the_cap():
    sup, _, gone = _supervisor(max_restarts=2, count=1)
    launcher = ScriptedLauncher()
    try:
        sup.start_all(launcher)
        for restart in (1, 2):
            launcher.exited[0] = 1
            sup.check(launcher)
            assert launcher.started == [0] * (restart + 1) and sup.restarts == restart
        assert [gid for gid, _ in gone] == [0, 0] and sup.links[0].version == 0  # a fresh link each time
        launcher.exited[0] = 1
        with pytest.raises(SupervisorError, match="generator 0 exited with code 1 after 2 restarts"):
            sup.check(launcher)
    finally:
        sup.close()


def test_the_last_word_of_a_generator_already_let_go_is_ignored():
    sup, send, _ = _supervisor()
    sup.on_heartbeat(_beat(4, status="stopping"), lambda *a: None)
    assert send.sent == [] and sup.generators == {}

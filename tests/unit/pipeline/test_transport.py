"""Real ZeroMQ sockets on loopback: delivery both ways, bad frames counted, loopback-only binds."""

import time

import pytest
import zmq

from pipeline.messages import Heartbeat, Stop, WeightUpdate
from pipeline.transport import GeneratorEndpoint, LearnerEndpoint, is_loopback


def _recv_until(endpoint, count, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += endpoint.recv(50)
    return got


def test_messages_flow_both_ways_and_bad_frames_are_counted():
    learner = LearnerEndpoint("127.0.0.1", 0, 0, max_frame_bytes=4096)
    gen = GeneratorEndpoint(learner.addresses, 3, max_frame_bytes=4096)
    try:
        gen.send_control(Heartbeat(generator_id=3, pid=1, status="ready", version=0))
        (hb,) = _recv_until(learner, 1)
        assert hb.generator_id == 3 and learner.identities[3] == b"gen-3"
        assert learner.send(3, Stop(reason="x"))
        assert not learner.send(99, Stop())  # unknown generator: refused, not lost silently
        assert _recv_until(gen, 1) == [Stop(reason="x")]

        # a stray peer floods both learner sockets with junk: counted, and real traffic still flows
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(learner.addresses.rollouts())
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(learner.addresses.control())
        for i in range(200):
            push.send(bytes([i % 256]) * (i + 1))
            dealer.send(b"\x93\x01\x02")
        push.send(b"x" * 10_000)  # over max_frame_bytes: zmq drops it at the socket
        gen.send_control(Heartbeat(generator_id=3, pid=1, status="ready", version=1))
        deadline = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline and not any(getattr(m, "version", 0) == 1 for m in seen):
            seen += learner.recv(50)
        assert any(isinstance(m, Heartbeat) and m.version == 1 for m in seen)
        deadline = time.monotonic() + 5
        while learner.rejected.total < 400 and time.monotonic() < deadline:
            learner.recv(50)
        assert learner.rejected.total == 400
        push.close(0), dealer.close(0), ctx.term()

        junk_to_gen = learner.control
        junk_to_gen.send_multipart([b"gen-3", b"not msgpack at all \xff"])
        learner.send(3, WeightUpdate(version=2, info={}))
        got = _recv_until(gen, 1)
        assert [m.version for m in got] == [2]
        assert gen.rejected.counts["malformed"] == 1
    finally:
        gen.close()
        learner.close()


def test_non_loopback_bind_is_refused():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="curve_dir"):
        LearnerEndpoint("0.0.0.0", 0, 0, 4096)


def test_curve_lets_keyed_peers_in_and_refuses_others(tmp_path):
    from pipeline.transport import make_keys

    good, other = tmp_path / "good", tmp_path / "other"
    make_keys(good)
    make_keys(other)  # a valid key pair the learner has never seen
    learner = LearnerEndpoint("127.0.0.1", 0, 0, 4096, curve_dir=str(good))
    peers = [GeneratorEndpoint(learner.addresses, 1, 4096, curve_dir=str(good)),
             GeneratorEndpoint(learner.addresses, 2, 4096, curve_dir=str(other)),
             GeneratorEndpoint(learner.addresses, 3, 4096)]  # no CURVE at all
    try:
        for i, p in enumerate(peers, start=1):
            p.send_control(Heartbeat(generator_id=i, pid=1, status="ready", version=0))
        got = _recv_until(learner, 3, timeout=3.0)
        assert [m.generator_id for m in got] == [1]
    finally:
        for p in peers:
            p.close()
        learner.close()
    with pytest.raises(ValueError, match="not found"):
        LearnerEndpoint("127.0.0.1", 0, 0, 4096, curve_dir=str(tmp_path / "missing"))


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_weight_ports_come_from_the_configured_range_in_turn_skipping_ports_held_elsewhere():
    import socket

    from pipeline.transport import Ports

    # Below the kernel's ephemeral range, so no connection elsewhere on a busy machine takes these ports
    # between the test's checks (the suite's other processes open sockets all the time).
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    held = socket.socket()
    try:
        for first in range(ephemeral - 3000, ephemeral - 3, 3):  # a range of three whose middle port is held
            try:
                held.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
            if all(_bindable(port) for port in (first, first + 2)):
                break
            held.close()
            held = socket.socket()
        held.listen()
        ports = Ports("127.0.0.1", [first, first + 2])
        assert [ports.take() for _ in range(4)] == [first, first + 2, first, first + 2]
        with socket.socket() as a, socket.socket() as b:  # all three held: the error names the setting
            a.bind(("127.0.0.1", first))
            b.bind(("127.0.0.1", first + 2))
            with pytest.raises(OSError, match=r"no free port in transport.weight_ports"):
                ports.take()
    finally:
        held.close()
    assert Ports("127.0.0.1").take() > 0  # no range: any free port


def test_an_address_generators_cannot_reach_is_refused_naming_transport_host(monkeypatch):
    import socket

    from pipeline.transport import check_reachable

    check_reachable("127.0.0.1")  # loopback is for generators on this machine: nothing to check
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "node7":  # as Debian's /etc/hosts maps a machine's own name
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.1.1", 0))]
        if host == "elsewhere":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))]  # TEST-NET: not ours
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ValueError, match=r"transport.host='node7' resolves to the loopback address 127.0.1.1"):
        check_reachable("node7")
    with pytest.raises(ValueError, match=r"transport.host='elsewhere' .* is not an address of this machine"):
        check_reachable("elsewhere")
    with pytest.raises(ValueError, match=r"transport.host='no-such-host.invalid' does not resolve"):
        monkeypatch.setattr(socket, "getaddrinfo", real)
        check_reachable("no-such-host.invalid")

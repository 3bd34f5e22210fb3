"""ZeroMQ endpoints for the two sides.

Learner: a ROUTER (control: heartbeats in; assignments, weight updates, stop out, addressed per
generator) and a PULL (rollouts in). Generator: a DEALER and a PUSH connected to those. Rollouts get
their own socket so a large group never queues behind control traffic.

Every received frame goes through `messages.Decoder`; a bad one is dropped, counted by kind and logged
once per kind, and the receiver carries on.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import threading

from dataclasses import dataclass
from pathlib import Path

import zmq

from pipeline.messages import Decoder, Encoder, Message, ToGenerator, ToLearner, WireError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1", port: int = 0) -> int:
    """`port` if it can be bound on `host` now (any free port for 0); OSError if not."""
    with socket.socket() as s:
        s.bind((host, port))
        return s.getsockname()[1]


class Ports:
    """Ports for the weight groups' rendezvous: from `transport.weight_ports = [first, last]`, taken in
    turn (a port just released is not taken again at once) and skipped while something else holds
    them; any free port without a range."""

    def __init__(self, host: str, span: list[int] | tuple[int, ...] = ()):
        self.host, self.span = host, tuple(span)
        self._next = self.span[0] if self.span else 0

    def take(self) -> int:
        if not self.span:
            return free_port(self.host)
        first, last = self.span
        for _ in range(last - first + 1):
            port, self._next = self._next, self._next + 1 if self._next < last else first
            try:
                return free_port(self.host, port)
            except OSError:
                continue
        raise OSError(f"no free port in transport.weight_ports = [{first}, {last}] on {self.host}: widen the range "
                      f"(one port per generator link)")


def check_reachable(host: str) -> None:
    """A learner that generators on other hosts dial must bind an address they can reach: refuse a
    name that resolves to a loopback address (Debian maps a machine's own name to 127.0.1.1), one that
    does not resolve, and one that is not this machine's."""
    if is_loopback(host):
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise ValueError(f"transport.host={host!r} does not resolve ({exc}): give an address of this machine "
                         f"that the generators can reach") from None
    loop = sorted(a for a in addresses if ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if loop:
        raise ValueError(f"transport.host={host!r} resolves to the loopback address {loop[0]}: generators on other "
                         f"hosts could not reach it; give this machine's address on their network instead")
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as s:
            try:
                s.bind((address, 0))
                return
            except OSError:
                continue
    raise ValueError(f"transport.host={host!r} ({', '.join(sorted(addresses))}) is not an address of this machine: "
                     f"the learner cannot listen there")


class RejectCounter:
    """Counts rejected frames per kind, logging the first of each kind only (a flood stays quiet)."""

    def __init__(self, where: str):
        self.where = where
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, err: WireError) -> None:
        if self.counts[err.kind] == 0:
            log.warning("%s: rejected a frame (%s); further %r rejections are only counted",
                        self.where, err, err.kind)
        self.counts[err.kind] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Addresses:
    host: str
    control_port: int
    rollout_port: int

    def control(self) -> str:
        return f"tcp://{self.host}:{self.control_port}"

    def rollouts(self) -> str:
        return f"tcp://{self.host}:{self.rollout_port}"


def _bind(sock: zmq.Socket, host: str, port: int) -> int:
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return port
    return sock.bind_to_random_port(f"tcp://{host}")


def make_keys(directory: Path) -> None:
    """`run.py keys`: a CURVE key pair for the learner (server) and one for generators (client), as
    ZeroMQ's own text certificate files. Generators need server.key + client.key_secret; the learner
    needs server.key_secret and accepts any client whose public key is in clients/."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "clients").mkdir(exist_ok=True)
    zmq.auth.create_certificates(str(directory), "server")
    zmq.auth.create_certificates(str(directory), "client")
    (directory / "clients" / "client.key").write_bytes((directory / "client.key").read_bytes())


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    import zmq.auth

    if not path.exists():
        raise ValueError(f"CURVE key file not found: {path} (make keys with `run.py keys --out DIR`)")
    public, secret = zmq.auth.load_certificate(str(path))
    return public, secret


class LearnerEndpoint:
    def __init__(self, host: str, control_port: int, rollout_port: int, max_frame_bytes: int,
                 curve_dir: str = ""):
        if not is_loopback(host) and not curve_dir:
            # Binding beyond loopback exposes the learner to the network; peers must authenticate.
            raise ValueError(
                f"transport.host={host!r} is not a loopback address: set transport.curve_dir to keys "
                "made by `run.py keys` (non-loopback binds require CURVE authentication)")
        check_reachable(host)
        self.ctx = zmq.Context()
        self.auth = None
        self.control = self.ctx.socket(zmq.ROUTER)
        self.rollouts = self.ctx.socket(zmq.PULL)
        if curve_dir:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = _load_pair(Path(curve_dir) / "server.key_secret")
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            # Only clients whose public key is in clients/ get through; everyone else is refused.
            self.auth.configure_curve(domain="*", location=str(Path(curve_dir) / "clients"))
            for sock in (self.control, self.rollouts):
                sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        for s in (self.control, self.rollouts):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable send raises, not vanishes
        self.addresses = Addresses(
            host,
            _bind(self.control, host, control_port),
            _bind(self.rollouts, host, rollout_port),
        )
        self.decoder = Decoder(ToLearner, max_frame_bytes)
        self.encoder = Encoder()
        self.rejected = RejectCounter("learner")
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.rollouts, zmq.POLLIN)
        # A local socket pair that other threads write to, so a blocked recv() returns at once when,
        # e.g., the optimiser step ends, instead of after its timeout (ZeroMQ sockets are not
        # thread-safe; a plain socket's send is).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self.identities: dict[int, bytes] = {}  # generator id -> ROUTER identity
        # A ZeroMQ socket may pass between threads with a full memory barrier in between: this lock
        # is that barrier. recv() holds it while it polls, so a sender from another thread wakes the
        # poll first and gets the socket within one poll, never waiting for the loop's next tick.
        self._lock = threading.Lock()

    def post(self, generator_id: int, msg: Message) -> bool:
        """`send` from any thread (a weight link's control messages): it goes out now, not at the
        loop's next recv()."""
        self.wake()
        return self.send(generator_id, msg)

    def wake(self) -> None:
        """Make a recv() that is waiting, or the next one, return without waiting (thread-safe)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken many times over, or closed: nothing is lost

    def send(self, generator_id: int, msg: Message) -> bool:
        ident = self.identities.get(generator_id)
        if ident is None:
            return False
        try:
            with self._lock:  # the encoder's buffer and the socket: one thread at a time
                self.control.send_multipart([ident, self.encoder.encode(msg)], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # peer gone or its queue full: the lease will expire
            log.warning("send to generator %d failed: %s", generator_id, exc)
            return False

    def recv(self, timeout_ms: int) -> list:
        """Every valid message waiting (after at most `timeout_ms`), in arrival order per socket."""
        with self._lock:
            return self._recv(timeout_ms)

    def _recv(self, timeout_ms: int) -> list:
        out = []
        events = dict(self.poller.poll(timeout_ms))
        if self._wake_r.fileno() in events:
            try:
                self._wake_r.recv(4096)
            except BlockingIOError:
                pass
        if self.control in events:
            while True:
                try:
                    frames = self.control.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 2:
                    self.rejected.add(WireError("malformed", f"{len(frames) - 1} body frames"))
                    continue
                msg = self._decode(frames[1])
                if msg is not None:
                    gid = getattr(msg, "generator_id", None)
                    if gid is not None:
                        self.identities[gid] = frames[0]
                    out.append(msg)
        if self.rollouts in events:
            while True:
                try:  # recv, not recv_multipart: one frame is the norm, so skip building a list per rollout
                    frame = self.rollouts.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if self.rollouts.getsockopt(zmq.RCVMORE):  # a rollout is one frame: drop a multipart message
                    count = 1
                    while self.rollouts.getsockopt(zmq.RCVMORE):
                        self.rollouts.recv()
                        count += 1
                    self.rejected.add(WireError("malformed", f"{count} frames"))
                    continue
                msg = self._decode(frame)
                if msg is not None:
                    out.append(msg)
        return out

    def _decode(self, frame: bytes):
        try:
            return self.decoder.decode(frame)
        except WireError as err:
            self.rejected.add(err)
            return None

    def close(self) -> None:
        self.control.close(0)
        self.rollouts.close(0)
        self._wake_r.close()
        self._wake_w.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


class GeneratorEndpoint:
    def __init__(self, addresses: Addresses, generator_id: int, max_frame_bytes: int, curve_dir: str = ""):
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.IDENTITY, f"gen-{generator_id}".encode())
        self.rollouts = self.ctx.socket(zmq.PUSH)
        if curve_dir:
            server_public, _ = _load_pair(Path(curve_dir) / "server.key")
            public, secret = _load_pair(Path(curve_dir) / "client.key_secret")
            for sock in (self.control, self.rollouts):
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
        for s in (self.control, self.rollouts):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.control.connect(addresses.control())
        self.rollouts.connect(addresses.rollouts())
        self.decoder = Decoder(ToGenerator, max_frame_bytes)
        self.encoder = Encoder()
        self.rejected = RejectCounter(f"generator {generator_id}")

    def send_control(self, msg: Message) -> None:
        self.control.send(self.encoder.encode(msg), copy=False)

    def send_rollout(self, msg: Message) -> None:
        self.rollouts.send(self.encoder.encode_reused(msg), copy=True)  # ZeroMQ copies it before returning

    def recv(self, timeout_ms: int) -> list:
        out = []
        if not self.control.poll(timeout_ms):
            return out
        while True:
            try:
                frame = self.control.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                out.append(self.decoder.decode(frame))
            except WireError as err:
                self.rejected.add(err)
        return out

    def close(self, linger_ms: int = 1000) -> None:
        """Close, giving queued messages (the last rollouts, the 'stopping' heartbeat that tells the
        learner this generator left) up to `linger_ms` to go out; -1 waits for all of them."""
        self.control.close(linger_ms)
        self.rollouts.close(linger_ms)
        self.ctx.term()

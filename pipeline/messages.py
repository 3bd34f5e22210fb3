"""Wire messages between the learner and the generators: msgspec Structs encoded as msgpack.

Token ids and log-probs travel as little-endian int32/float32 byte strings (a 1k-token sample is
8 kB, not a list of 2k Python objects). Each message is tagged with its type and carries the protocol
version; `decode` rejects anything else with a `WireError` whose `kind` names what was wrong, so a
receiver can count rejections per kind and go on.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec
import numpy as np

PROTOCOL_VERSION = 5  # 2: Alive; 3: seeded waves (exact lag); 4: vLLM's weight-transfer protocol (WeightInit);
# 5: Heartbeat without its unread in-flight list

_IDS = np.dtype("<i4")
_FLOATS = np.dtype("<f4")


def pack_ids(ids) -> bytes:
    return np.asarray(ids, dtype=_IDS).tobytes()


def unpack_ids(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_IDS)


def pack_floats(values) -> bytes:
    return np.asarray(values, dtype=_FLOATS).tobytes()


def unpack_floats(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_FLOATS)


class Message(msgspec.Struct, tag=True, forbid_unknown_fields=True, kw_only=True):
    protocol: int = PROTOCOL_VERSION


class Assignment(Message, kw_only=True):
    """A lease on one prompt visit: generate `n` responses at `temperature` (decided by the learner)."""

    lease_id: int
    prompt_id: int
    epoch: int
    temperature: float
    n: int
    # the learner's version when leased: a wave (exact lag) waits for these weights and is sampled under
    # them; a sample records the versions it was actually sampled under
    policy_version: int
    prompt_tokens: bytes
    answer: str
    verifier: str  # "math" (math-verify) or "reasoning_gym:<task>"
    metadata: str = "{}"  # JSON the verifier may need (reasoning-gym entry metadata)
    max_tokens: int
    # Exact lag control (learner/orchestration/exact.py): sample j is drawn with seed `seed + j` (-1: unseeded), and
    # the `wave_size` leases of one wave at this generator start together, alone (0: not in a wave).
    seed: int = -1
    wave: int = -1
    wave_size: int = 0


class Sample(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tokens: bytes  # int32 response token ids
    logprobs: bytes  # float32 behaviour log-probs, under softmax(logits / temperature)
    reward: float
    version_first: int  # weight version when the first token was sampled
    version_last: int  # ... and when the last one was (differs only under in-flight updates)
    finish_reason: str
    verify_status: str = "ok"  # ok | timeout | error | unparsable
    token_versions: bytes = b""  # int32 weight version per token; empty when the sample has one version


class Rollout(Message, kw_only=True):
    """One completed group: all `n` responses of one lease (so a group is never partial on the wire)."""

    lease_id: int
    generator_id: int
    prompt_id: int
    epoch: int
    temperature: float  # the temperature actually used, recorded for the learner
    prompt_tokens: bytes
    samples: list[Sample]
    gen_seconds: float
    verify_seconds: float


class WeightInit(Message, kw_only=True):
    """Join the learner's weight group: vLLM's `init_weight_transfer_engine` with `info` (the worker
    init info of `backend`'s engine: rendezvous address, rank offset, world size, bucket size)."""

    backend: str
    info: dict[str, Any]


class WeightUpdate(Message, kw_only=True):
    """Weights of `version` follow on the weight group: vLLM's `update_weights` with `info` (names,
    dtypes and shapes, in the order they are packed), between its start and finish phases."""

    version: int
    info: dict[str, Any]


class Heartbeat(Message, kw_only=True):
    generator_id: int
    pid: int
    status: str  # starting (engine loading) | joining (its weight group) | ready | generating | updating | torn | stopping
    version: int  # weight version loaded in the engine (vLLM's own: `get_weight_version`)
    probe_version: int = -1  # weight version the probe was scored under
    probe_logprobs: list[float] = []  # log-probs of the fixed probe sequence (pipeline/probe.py)
    busy_s: float = 0.0  # cumulative seconds spent generating and verifying
    workers: int = 1  # the engine's worker processes (tensor-parallel size): its ranks in the weight group
    receiving: int = -1  # the weight version it is receiving now (-1: none); a shared group's failure is pinned by it


class Stop(Message, kw_only=True):
    reason: str = ""


class Alive(Message, kw_only=True):
    """The learner's answer to a heartbeat: a generator that hears nothing from its learner for
    `generator.learner_timeout_s` exits by itself, releasing its engine."""


ToGenerator = Union[Assignment, WeightInit, WeightUpdate, Stop, Alive]
ToLearner = Union[Heartbeat, Rollout]


class WireError(ValueError):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Encoder:
    """Encodes into a buffer pre-sized from the previous message: a large rollout then costs one
    allocation instead of a chain of reallocations (measured 12 us vs 150 us for a 134 kB group)."""

    def __init__(self):
        self._encoder = msgspec.msgpack.Encoder()
        self._hint = 4096
        self._reused = bytearray()

    def encode(self, msg: Message) -> bytearray:
        buf = bytearray(self._hint)
        self._encoder.encode_into(msg, buf)
        self._hint = max(4096, len(buf) + len(buf) // 8)
        return buf

    def encode_reused(self, msg: Message) -> bytearray:
        """Encodes into one buffer kept for the next call: valid only until then, so send it with
        copy=True. For a stream of large messages this skips an allocation, its zero-filling and its
        page faults per message (a fresh 150 kB buffer each time cost more than the encoding)."""
        self._encoder.encode_into(msg, self._reused)
        return self._reused


def encode(msg: Message) -> bytes:
    """One-off encoding (tests, tools); endpoints keep an `Encoder`."""
    return msgspec.msgpack.encode(msg)


class _Envelope(msgspec.Struct):
    """Only the protocol field, read first so a version mismatch is reported as such."""

    protocol: int = -1


_envelope = msgspec.msgpack.Decoder(_Envelope)


class Decoder:
    """Decodes one message type union; raises WireError(kind) for every kind of bad frame."""

    def __init__(self, union, max_bytes: int):
        self._decoder = msgspec.msgpack.Decoder(union)
        self.max_bytes = max_bytes

    def decode(self, frame: bytes):
        if len(frame) > self.max_bytes:
            raise WireError("oversized", f"{len(frame)} bytes > limit {self.max_bytes}")
        try:
            msg = self._decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._classify(frame, exc) from None
        if msg.protocol != PROTOCOL_VERSION:
            raise WireError("protocol", f"protocol {msg.protocol}, expected {PROTOCOL_VERSION}")
        return msg

    @staticmethod
    def _classify(frame, exc: Exception) -> WireError:
        """Only for a frame that failed: was it not msgpack, another protocol version, or a bad schema?"""
        try:
            head = _envelope.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return WireError("malformed", str(exc))
        if head.protocol != PROTOCOL_VERSION:
            return WireError("protocol", f"protocol {head.protocol}, expected {PROTOCOL_VERSION}")
        if isinstance(exc, msgspec.ValidationError):
            return WireError("schema", str(exc))
        return WireError("malformed", str(exc))

"""Test doubles, each standing in for one real part in a test of something else. Nothing here is the
thing a feature is tested on end to end."""

from __future__ import annotations

import sys
import time

import torch

from learner.training.trainer import StepResult, Trainer


class ProbeTrainer:
    """Stands in for the trainer where only its version, probe log-probs and weights in host memory
    matter (the weights' publisher): one small tensor that records the version it was copied at."""

    def __init__(self, version: int = 3):
        self.version = version
        self.copies: list[int] = []  # the versions whose weights were copied

    def probe_logprobs(self) -> list[float]:
        return [-1.0, -2.0, -0.5]

    def host_weights(self, dtype: torch.dtype, into=None) -> list[tuple[str, torch.Tensor]]:
        self.copies.append(self.version)
        if into is not None:
            into[0][1].fill_(float(self.version))
            return into
        return [("w", torch.full((2,), float(self.version), dtype=dtype))]


class SlowStepTrainer(Trainer):
    """The real trainer, except that each step waits `delay_s` between its backward pass and its
    update (so a checkpoint taken beside a running step would catch it midway), and the weights
    after every step are kept by version, to compare with what a checkpoint holds."""

    def __init__(self, *args, delay_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def slow(cls, cfg, model_path: str, delay_s: float) -> "SlowStepTrainer":
        return cls(model_path, cfg.learner, cfg.loss, cfg.zvp, cfg.run.seed, cfg.generator.max_tokens,
                   cfg.model.dtype, delay_s=delay_s)

    def step(self, groups, before_update=None, on_batch=None) -> StepResult:
        def slow():
            time.sleep(self.delay_s)
            if before_update is not None:
                before_update()

        out = super().step(groups, before_update=slow, on_batch=on_batch)
        self.after[self.version] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return out


class RecordingSend:
    """Stands in for the learner endpoint's `send`: records (generator id, message), says delivered."""

    def __init__(self):
        self.sent: list[tuple[int, object]] = []

    def __call__(self, gid: int, msg) -> bool:
        self.sent.append((gid, msg))
        return True


class ScriptedLauncher:
    """Stands in for the launcher (pipeline/launcher.py) in supervisor tests: generators it "starts"
    are processes of nobody; the test says which of them died, with what exit code."""

    def __init__(self):
        self.started: list[int] = []
        self.killed: list[int] = []
        self.exited: dict[int, int] = {}

    def start(self, gid: int) -> None:
        self.started.append(gid)
        self.exited.pop(gid, None)

    def manages(self, gid: int) -> bool:
        return gid in self.started

    def kill(self, gid: int) -> None:
        self.killed.append(gid)
        self.exited[gid] = -9

    def dead(self) -> dict[int, int]:
        return dict(self.exited)

    def log_tail(self, gid: int) -> str:
        return f"(log of generator {gid})\nRuntimeError: no engine for generator {gid}"

    def starting_from(self, model_path: str, version: int, backend: str) -> None:
        pass  # what its generators would load: nothing here loads anything


class ScriptedTrainer:
    """Stands in for the trainer in stepper tests: a step records the order of what happens in it,
    and can be made to fail."""

    concurrent_snapshot = True

    def __init__(self, fail: bool = False):
        self.version = 0
        self.fail = fail
        self.events: list[str] = []

    def step(self, groups, before_update=None, on_batch=None) -> dict:
        self.events.append("backward")
        if before_update is not None:
            before_update()
        if self.fail:
            raise RuntimeError("the step failed")
        self.events.append("update")
        self.version += 1
        return StepResult({"groups": len(groups)}, {})


class IdleLink:
    """Stands in for a generator's weight link (learner/weights/links.py) where no weights move: joined
    at once, never busy."""

    def __init__(self, gid: int, workers: int):
        self.port, self.joined, self.error, self.version, self.closed = 1000 + gid, True, None, -1, False
        self.sending = None  # the snapshot being sent: none, ever

    @property
    def ready(self) -> bool:
        return not self.closed

    def failure(self, now: float | None = None) -> BaseException | None:
        return self.error

    def close(self, timeout: float = 0.0) -> bool:
        self.closed = True
        return True


class RecordingMembership:
    """Stands in for the weights' owner where the supervisor only tells it who joined and who left;
    a link fails when the test puts an error in `failures`."""

    def __init__(self):
        self.joins: list[int] = []
        self.leaves: list[int] = []
        self.failures: dict[int, BaseException] = {}
        self._joined: set[int] = set()

    def join(self, gid: int, workers: int, version: int) -> None:
        self.joins.append(gid)
        self._joined.add(gid)

    def leave(self, gid: int) -> None:
        if gid in self._joined:
            self.leaves.append(gid)
        self._joined.discard(gid)
        self.failures.pop(gid, None)

    def joined(self, gid: int) -> bool:
        return gid in self._joined

    def handed(self, gid: int) -> int:
        return 0

    def failure(self, gid: int, now: float | None = None) -> BaseException | None:
        return self.failures.get(gid)


class RecordingLink(IdleLink):
    """An idle link that records the snapshots handed to it (`busy` holds it as if a broadcast ran)."""

    def __init__(self, gid: int, workers: int):
        super().__init__(gid, workers)
        self.sent: list[int] = []
        self.busy = False

    @property
    def ready(self) -> bool:
        return not self.closed and not self.busy

    def submit(self, snapshot) -> None:
        self.sent.append(snapshot.version)
        self.version = snapshot.version


def recording_link(members: dict[int, int]) -> RecordingLink:
    """`OpenLink` for a group of one generator each (learner/weights/membership.py's OwnGroups)."""
    (gid, workers), = members.items()
    return RecordingLink(gid, workers)


class FailingStartLauncher:
    """The real launcher, except that the generators in `broken` are processes that fail at start-up
    as an engine that cannot start would (a message on stderr, exit code 3)."""

    def __new__(cls, *args, broken: set[int], **kwargs):
        from pipeline.launcher import Launcher

        class _Failing(Launcher):
            def command(self, generator_id: int) -> list[str]:
                if generator_id in broken:
                    return [sys.executable, "-c", "import sys; print('RuntimeError: the engine cannot start on "
                            f"this device (generator {generator_id})', file=sys.stderr); sys.exit(3)"]
                return super().command(generator_id)

        return _Failing(*args, **kwargs)


class QueueEndpoint:
    """Stands in for the learner's endpoint (pipeline/transport.py) in tests of the loop's tick: what
    the test `deliver`s comes out of the next recv(); what the learner sends is recorded."""

    def __init__(self):
        import types

        self.inbox: list = []
        self.sent: list[tuple[int, object]] = []
        self.rejected = types.SimpleNamespace(counts={}, total=0)  # as the endpoint's reject counter reads

    def deliver(self, *messages) -> None:
        self.inbox.extend(messages)

    def recv(self, timeout_ms: int) -> list:
        out, self.inbox = self.inbox, []
        return out

    def send(self, gid: int, msg) -> bool:
        self.sent.append((gid, msg))
        return True

    post = send

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass

    def assignments(self) -> list:
        from pipeline.messages import Assignment

        return [m for _, m in self.sent if isinstance(m, Assignment)]


class NoModelTokenizer:
    """Stands in for a model's tokenizer where prompts only need to be token ids: [1, 2, length]."""

    chat_template = None

    def encode(self, text: str) -> list[int]:
        return [1, 2, len(text)]


class GatedTrainer(ProbeTrainer):
    """Stands in for the trainer in tests of the loop's tick: a step records its groups and ends only
    once the test opens its gate (open from the start unless `gated`)."""

    concurrent_snapshot = True
    device = torch.device("cpu")
    dtype = "float32"

    def __init__(self, gated: bool = False):
        import threading

        super().__init__(version=0)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.steps: list[list[int]] = []  # each step's lease ids

    def step(self, groups, before_update=None, on_batch=None) -> StepResult:
        self.steps.append([g.lease_id for g in groups])
        if before_update is not None:
            before_update()
        assert self.gate.wait(60), "the test never let the step finish"
        self.version += 1
        return StepResult({"loss": 0.0}, {i: [0.0, 1.0] for i in range(len(groups))})

    def keep_alive(self) -> None:
        pass


class HeldWriter:
    """Stands in for the checkpoint writer (learner/training/checkpoint.py) in tests of the loop: it
    records each cut (the version, and whether a step was running) and stays busy until `release()`."""

    def __init__(self, stepper_of):
        self.stepper_of = stepper_of  # () -> the learner's stepper, to see whether a step runs at the cut
        self.cuts: list[tuple[int, bool, list[int]]] = []  # (version, a step running, buffered lease ids)
        self.busy = False

    def start(self, trainer, state: dict) -> None:
        self.cuts.append((trainer.version, self.stepper_of().running is not None,
                          sorted(g.lease_id for g in state["buffer"])))
        self.busy = True

    def release(self) -> None:
        self.busy = False

    def collect(self, wait: bool = False):
        return None


class FormationLink:
    """Stands in for one formation of a shared weight group (learner/weights/shared.py): the test
    says when it has joined (`joined`), when its broadcast ends (`sending`) and how it fails (`error`)."""

    def __init__(self, members: dict[int, int]):
        self.members, self.port = dict(members), 2000
        self.version, self.joined, self.error, self.sending = -1, False, None, None
        self.closed, self.sent = False, []

    @property
    def ready(self) -> bool:
        return self.joined and self.sending is None and self.error is None and not self.closed

    @property
    def ended(self) -> bool:
        return self.closed and self.sending is None

    def failure(self, now: float | None = None) -> BaseException | None:
        return self.error

    def submit(self, snapshot) -> None:
        self.sending, self.version = snapshot, snapshot.version
        self.sent.append(snapshot.version)

    def close(self, timeout: float = 0.0) -> bool:
        self.closed = True
        return True

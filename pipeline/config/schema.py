"""The run's settings: one msgspec Struct per section, each setting with its type, range, default and
a one-line description (what `run.py config` prints and docs/configuration.md lists).

Every section forbids unknown keys and carries range constraints, so a typo or a bad value fails at
start-up with the field's dotted path in the message, before any process is spawned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PosInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


def D(text: str) -> Meta:
    """A setting's description (one line; the reference renders it as written)."""
    return Meta(description=text)


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RunConfig(Section):
    """Where a run writes and how it seeds itself."""

    name: Annotated[str, D("the run's name: it writes <out_dir>/<name>/ (metrics, checkpoints, summary, logs)")] = "default"
    out_dir: Annotated[str, D("the folder of all runs")] = "runs"
    cache_dir: Annotated[str, D("where built and converted models are cached; empty: <out_dir>/cache")] = ""
    seed: Annotated[int, D("the run's seed: model init, data order of procedural sets, sampling seeds of exact lag")] = 0
    torch_threads: Annotated[PosInt, D("torch threads per process (learner and generators share the cores)")] = 1


class TinyModelConfig(Section):
    """A Qwen2-architecture model built locally, so nothing is downloaded."""

    hidden_size: Annotated[PosInt, D("hidden width")] = 128
    intermediate_size: Annotated[PosInt, D("MLP width")] = 256
    num_layers: Annotated[PosInt, D("decoder layers")] = 2
    num_heads: Annotated[PosInt, D("attention heads")] = 2
    num_kv_heads: Annotated[PosInt, D("key/value heads (grouped-query attention)")] = 1
    max_position_embeddings: Annotated[PosInt, D("its context length, in tokens")] = 128


class ModelConfig(Section):
    """The policy model."""

    path: Annotated[str, D("a Hugging Face model folder, a packaged model's name (smollm2-135m-instruct), a hub id "
                           "(online machines); empty: build the tiny model")] = ""
    dtype: Annotated[Literal["float32", "bfloat16", "float16"],
                     D("the dtype weights travel and the engine runs in")] = "float32"
    tiny: TinyModelConfig = msgspec.field(default_factory=TinyModelConfig)


class WarmStartConfig(Section):
    """A short supervised phase, so the tiny model solves a fair share of prompts before RL."""

    enabled: Annotated[bool, D("warm-start the tiny model (ignored for a real model)")] = True
    steps: Annotated[NonNegInt, D("supervised steps (with until_accuracy: at most this many)")] = 300
    until_accuracy: Annotated[float, Meta(ge=0, le=1), D(
        "stop once greedy accuracy on held-apart problems reaches this (checked every check_every steps), so "
        "every seed and CPU starts RL from about the same skill; 0: run all steps")] = 0.0
    check_every: Annotated[PosInt, D("steps between those checks")] = 25
    check_size: Annotated[PosInt, D("held-apart problems in each check")] = 128
    batch_size: Annotated[PosInt, D("examples per supervised step")] = 64
    lr: Annotated[PosFloat, D("its learning rate")] = 1e-3
    examples: Annotated[PosInt, D("distinct examples drawn for it")] = 4000
    seed: Annotated[int, D("its seed; -1: run.seed (fix it so a sweep's seeds share one warm start)")] = -1


class DataFields(Section):
    """The columns of a dataset that hold the problem and its gold answer."""

    question: Annotated[str, D("the column of the problem text")] = "problem"
    answer: Annotated[str, D("the column of the gold answer")] = "answer"


class DataConfig(Section):
    """The training prompts and how each becomes a prompt."""

    source: Annotated[str, D("reasoning_gym:<task>, a registry name (gsm8k, math500, aime24, aime25, amc23, "
                             "olympiadbench), a local .jsonl/.json/.parquet file or folder, or a hub id online")
                      ] = "reasoning_gym:basic_arithmetic"
    fields: DataFields = msgspec.field(default_factory=DataFields)
    split: Annotated[str, D("the dataset split")] = "train"
    size: Annotated[PosInt, D("prompts drawn from a procedural source (fixed datasets are used whole)")] = 256
    seed: Annotated[int, D("the seed of procedural prompts and of the visiting order")] = 1234
    data_dir: Annotated[str, D("where registry datasets are found; empty: $RLVR_DATA_DIR, else ../shared/data")] = ""
    chat_template: Annotated[bool | Literal["auto"], D("prompt through the tokenizer's chat template (a user turn); "
                                                       "false: prompt_template; auto: the template if there is one")
                             ] = "auto"
    system_prompt: Annotated[str, D("a system turn before the problem (chat template only)")] = ""
    instruction: Annotated[str, D("a line after the problem in the user turn, e.g. Put the final answer in "
                                  "\\boxed{}.")] = ""
    prompt_template: Annotated[str, D("the prompt without a chat template; {question} is the problem")] = "{question}"
    task_options: Annotated[dict[str, Any], D("options of the reasoning-gym task")] = msgspec.field(default_factory=dict)
    answer_style: Annotated[Literal["", "boxed", "marker", "last_number"],
                            D("how a response's final answer is read: boxed, marker (boxed, #### x, answer is x), "
                              "last_number; empty: the dataset's own")] = ""


class TransportConfig(Section):
    """The learner's ZeroMQ sockets."""

    host: Annotated[str, D("the address the learner binds; beyond loopback it needs curve_dir")] = "127.0.0.1"
    curve_dir: Annotated[str, D("CURVE keys made by run.py keys: peers must authenticate with them")] = ""
    control_port: Annotated[Port, D("control socket (leases, heartbeats); 0: a free port")] = 0
    rollout_port: Annotated[Port, D("rollout socket; 0: a free port")] = 0
    max_frame_bytes: Annotated[PosInt, D("the largest message accepted; larger frames are rejected and counted")
                               ] = 64 * 1024 * 1024
    weight_ports: Annotated[list[Port], D("first and last port the weight groups' rendezvous may take, one "
                                          "per generator link (open them in a firewall); empty: any free port")
                            ] = msgspec.field(default_factory=list)


class GeneratorConfig(Section):
    """The generator processes and their vLLM engines."""

    count: Annotated[NonNegInt, D("generators the learner launches; 0: all join by themselves (Slurm)")] = 1
    devices: Annotated[list[str], D("CUDA_VISIBLE_DEVICES of each generator in turn, e.g. [\"0\", \"1\"]; empty: "
                                    "the environment's")] = msgspec.field(default_factory=list)
    tensor_parallel_size: Annotated[PosInt, D("tensor-parallel workers per engine")] = 1
    max_tokens: Annotated[PosInt | Literal["auto"], D("generated tokens per response; auto: the model's generation "
                                                      "config, else 1024")] = "auto"
    max_inflight: Annotated[PosInt, D("leases running at one generator at once (its vLLM batch)")] = 8
    kv_cache_bytes: Annotated[PosInt | Literal["auto"], D("the engine's KV cache; auto: on CPU the context x its "
                                                          "sequences capped by free memory, on GPU vLLM's own")
                              ] = "auto"
    max_model_len: Annotated[NonNegInt, D("the engine's context; 0: the model's own")] = 0
    heartbeat_s: Annotated[PosFloat, D("seconds between a generator's heartbeats")] = 1.0
    heartbeat_timeout_s: Annotated[PosFloat, D("a generator silent this long is killed and restarted (it beats "
                                               "between decode steps, and from a thread while its engine loads or "
                                               "weights arrive)")] = 300.0
    learner_timeout_s: Annotated[PosFloat, D("a generator that hears nothing from its learner this long exits, "
                                             "releasing its engine, even from inside a weight transfer")] = 600.0
    max_restarts_per_hour: Annotated[PosFloat, D("a launched generator that dies more often than this in the last "
                                                 "hour cools down (cooldown_s)")] = 30.0
    max_failed_starts: Annotated[PosInt, D("a generator that fails to start this many times in a row cools down; "
                                           "if none has been ready since the learner started, the run stops")] = 3
    cooldown_s: Annotated[list[PosFloat], Meta(min_length=1),
                          D("rests of a generator over its budget before it is tried again, one per cool-down in "
                            "a row (the last repeats)")] = msgspec.field(default_factory=lambda: [60.0, 300.0, 900.0,
                                                                                                  1800.0, 3600.0])
    restart_backoff_max_s: Annotated[PosFloat, D("longest back-off before restarting one that keeps dying young "
                                                 "(doubles from 1 s)")] = 60.0
    start_timeout_s: Annotated[PosFloat, D("a launched generator whose engine is not up this long after its start "
                                           "is killed, a failed start")] = 1800.0
    none_alive_timeout_s: Annotated[PosFloat, D("a run that launches no generator of its own stops when none has "
                                                "been alive this long")] = 900.0
    verifier_timeout_s: Annotated[PosFloat, D("a math-verify call past this is killed and scored 0")] = 10.0
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1), D("vLLM's share of a GPU's memory")] = 0.5
    enforce_eager: Annotated[bool | Literal["auto"], D("no CUDA graphs; auto: graphs on a GPU, eager on a CPU")
                             ] = "auto"
    kv_block_size: Annotated[NonNegInt, D("tokens per KV-cache block; 0: vLLM's default (CPU takes multiples of "
                                          "32)")] = 0
    update_mode: Annotated[Literal["drain", "inflight"], D("drain: load new weights between groups (a group has "
                                                           "one version); inflight: between decode steps")] = "drain"


class WeightsConfig(Section):
    """How new weights reach the generators (learner/weights/)."""

    timeout_s: Annotated[PosFloat, D("how long a weight link waits for its generator to join, and for one "
                                     "broadcast, before it gives up")] = 120.0
    backend: Annotated[Literal["auto", "gloo", "nccl"], D("vLLM's weight-transfer engine: nccl (GPU to GPU), gloo "
                                                         "(host memory; CPU, or a shared GPU); auto: nccl from a "
                                                         "learner on a GPU")] = "auto"
    bucket_bytes: Annotated[int, Meta(ge=1 << 20), D("weights travel in buckets of this size (gloo sends each "
                                                     "straight from the learner's snapshot; a generator holds two "
                                                     "receive buffers of it)")] = 64 << 20
    group: Annotated[Literal["shared", "own"], D("shared: one weight group for the pool, each version leaves the "
                                                 "learner once, a member that fails is cut out and the group "
                                                 "re-formed; own: a group per generator, a version leaves once "
                                                 "per generator (README, GPU pools)")] = "shared"


class ScheduleConfig(Section):
    """ERPO's temperature schedule T_i = min(T0 + Ts * H_i, Tmax) (docs/algorithms.md §2)."""

    t0: Annotated[PosFloat, D("T0: the base sampling temperature")] = 1.0
    ts: Annotated[NonNegFloat, D("Ts: temperature added per all-correct visit in H; 0: plain sampling at T0")] = 0.02
    tmax: Annotated[PosFloat, D("Tmax: the highest temperature")] = 1.2


class TrackerConfig(Section):
    """The per-prompt history H_i (docs/algorithms.md §2)."""

    reset_on_mixed: Annotated[bool, D("reset H_i to 0 when a visit comes back mixed")] = False


class LossConfig(Section):
    """The clipped policy loss and its lag correction (docs/algorithms.md §5); w = pi_prox/mu, u = pi_theta/pi_prox."""

    correction: Annotated[Literal["ppo_behaviour", "tis", "mis", "seq_mis", "m2po", "ess_tis", "ipo", "tis_temp"],
                          D("lag correction: ppo_behaviour, tis (truncated w), mis (mask tokens), seq_mis "
                            "(mask sequences), m2po (second-moment mask), ess_tis (tis scaled by the ESS), ipo "
                            "(mask by probability gap), tis_temp (cap widening with T)")] = "tis"
    eps_low: Annotated[float, Meta(ge=0, lt=1), D("PPO clip below 1")] = 0.2
    eps_high: Annotated[NonNegFloat, D("PPO clip above 1 (clip-higher); eps_low for symmetric clipping")] = 0.28
    is_cap: Annotated[float, Meta(ge=1), D("C: truncate w at C (tis) or mask outside [1/C, C] (mis)")] = 2.0
    m2_threshold: Annotated[PosFloat, D("m2po: tau, the largest second moment mean (log w)^2 left unmasked")] = 0.04
    ipo_eps: Annotated[float, Meta(gt=0, le=1), D("ipo: a token is masked when |pi_prox - mu| exceeds this")] = 0.3
    logprob_temperature: Annotated[Literal["sample", "one"], D("log-probs at each sample's temperature, or at 1")
                                   ] = "sample"
    aggregation: Annotated[Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"],
                           D("token_mean (DAPO), seq_mean_token_mean (GRPO), seq_mean_token_sum_norm (Dr. GRPO)")
                           ] = "token_mean"
    norm_tokens: Annotated[NonNegInt, D("Dr. GRPO's constant; 0: generator.max_tokens")] = 0


class AdvantageConfig(Section):
    """Group advantages (docs/algorithms.md §1, §3)."""

    kind: Annotated[Literal["grpo", "rlzvp"], D("grpo, or rlzvp (zero-variance groups get entropy-shaped "
                                                "token advantages)")] = "grpo"
    eps: Annotated[PosFloat, D("added to the group's reward std")] = 1e-6
    std: Annotated[Literal["unbiased", "population"], D("the group's reward std over n - 1 (unbiased) or n")
                   ] = "unbiased"


class ReactivationConfig(Section):
    """ERPO's Reactivation Advantage for zero-variance groups (docs/algorithms.md §2)."""

    enabled: Annotated[bool, D("give all-correct groups ERPO's Reactivation Advantage")] = False
    m: Annotated[PosInt, D("virtual responses added to such a group")] = 1
    r_virtual: Annotated[float, D("their reward")] = 0.0
    negative: Annotated[bool, D("mirror it for all-wrong groups (virtual reward 1 - r_virtual)")] = False


class ZVPConfig(Section):
    """RL-ZVP's entropy-shaped token advantages (docs/algorithms.md §3)."""

    alpha: Annotated[NonNegFloat, D("alpha: the scale of the entropy advantage")] = 0.1
    entropy_temperature: Annotated[Literal["one", "sample"], D("entropy at temperature 1 or the sample's")] = "one"


class DAPOConfig(Section):
    """DAPO's batch-level options (docs/algorithms.md §1); clip-higher lives in `loss`."""

    dynamic_sampling: Annotated[bool, D("drop groups with no signal (all advantages zero), keep drawing")] = False
    max_gen_batches: Annotated[PosInt, D("stop filtering after this many batches' worth of drops in a step")] = 10
    oversample: Annotated[float, D("exact lag: a wave leases ceil(B x this) groups and trains the first B with "
                                   "signal")] = 1.5
    overlong_shaping: Annotated[bool, D("soft penalty on responses near generator.max_tokens")] = False
    overlong_cache: Annotated[PosInt, D("L_cache of overlong shaping (L_max is generator.max_tokens)")] = 4


class LearnerConfig(Section):
    """The learner: steps, batch, lag, checkpoints, memory."""

    device: Annotated[str, D("the learner's device; empty: cuda if visible, else cpu")] = ""
    steps: Annotated[PosInt, D("optimiser steps (weight versions)")] = 40
    groups_per_step: Annotated[PosInt, D("B: complete groups per optimiser step")] = 8
    group_size: Annotated[PosInt, D("n: responses per prompt visit")] = 8
    lr: Annotated[PosFloat, D("AdamW learning rate")] = 1e-4
    weight_decay: Annotated[NonNegFloat, D("AdamW weight decay")] = 0.0
    grad_clip: Annotated[PosFloat, D("gradient norm clip")] = 1.0
    max_lag: Annotated[NonNegInt, D("samples generated more versions ago than this are dropped, counted")] = 4
    lag_control: Annotated[Literal["bounded", "exact"], D("bounded: lag at most max_lag, by timing; exact: step t "
                                                          "trains groups of version t - max_lag, seeded")] = "bounded"
    max_open_groups: Annotated[NonNegInt, D("leases open at once; 0: (max_lag + 1) x groups_per_step, more "
                                            "over-provisions")] = 0
    sync_every: Annotated[PosInt, D("send weights every this many steps (the last always goes)")] = 1
    sample_budget: Annotated[NonNegInt, D("stop once this many samples were generated; 0: no limit")] = 0
    checkpoint_every: Annotated[NonNegInt, D("steps between checkpoints; 0: only at the end and on SIGTERM")] = 50
    keep_checkpoints: Annotated[PosInt, D("checkpoints kept (the newest)")] = 2
    lease_timeout_s: Annotated[PosFloat, D("a lease not back in this long is re-issued")] = 120.0
    idle_timeout_s: Annotated[PosFloat, D("the run stops, naming it, when no rollout arrives this long")] = 300.0
    step_timeout_s: Annotated[PosFloat, D("an optimiser step running longer is a stall: the run stops, naming it")
                              ] = 3600.0
    group_timeout_s: Annotated[PosFloat, D("under torchrun: the training processes' collective timeout")] = 1800.0
    micro_batch_tokens: Annotated[NonNegInt, D("tokens per micro-batch per training process (memory is set by "
                                               "this, not the batch); 0: one piece")] = 16384
    packing: Annotated[bool, D("lay a micro-batch's samples end to end (no padding); false: padded rows")] = True
    logit_chunk_tokens: Annotated[PosInt, D("positions that meet the output layer at once")] = 2048
    activation_checkpointing: Annotated[bool, D("recompute each decoder layer in the backward pass")] = False
    precision: Annotated[Literal["fp32", "bf16-mixed", "bf16"], D("fp32 (16 B/param with AdamW), bf16-mixed (bf16 "
                                                                 "compute), bf16 (8 B/param)")] = "fp32"
    updates_per_batch: Annotated[PosInt, D("k optimiser updates per rollout batch (one version); pi_prox is "
                                           "the policy at its start")] = 1


class EvalConfig(Section):
    """Held-out evaluation: k samples per problem through the generators' vLLM engines."""

    source: Annotated[str, D("a dataset name or reasoning_gym:<task>; empty: the training source (fresh "
                             "problems for procedural ones)")] = ""
    split: Annotated[str, D("its split")] = "test"
    size: Annotated[PosInt, D("problems (procedural sources; fixed datasets whole up to this)")] = 128
    seed: Annotated[int, D("the seed of procedural held-out problems")] = 99991
    k: Annotated[PosInt, D("samples per problem (mean@k, pass@k)")] = 4
    temperature: Annotated[PosFloat, D("their temperature")] = 1.0
    max_tokens: Annotated[NonNegInt, D("their length; 0: generator.max_tokens")] = 0
    every: Annotated[NonNegInt, D("evaluate every this many steps during training; 0: never mid-run")] = 0
    first: Annotated[bool, D("evaluate the starting weights too (mean@k before training)")] = False
    final: Annotated[bool, D("evaluate at the end of training")] = True


class LogConfig(Section):
    """Where metrics go besides metrics.jsonl."""

    wandb: Annotated[bool, D("log to wandb")] = True
    wandb_mode: Annotated[Literal["offline", "online", "disabled"], D("wandb's mode (online needs a login)")
                          ] = "offline"
    progress: Annotated[bool, D("progress bars")] = True


class Config(Section):
    """A run's whole configuration."""

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

"""Which GPUs the learner and the generators take, checked before anything starts.

A learner that lands on a generator's GPU fails late and obscurely (vLLM's free-memory check, or NCCL
reporting a duplicate GPU), and a tensor-parallel engine given fewer GPUs than its size never starts.
Both are decided by the config and the learner's CUDA_VISIBLE_DEVICES, so both are checked here.
"""

from __future__ import annotations

from pipeline.config import Config, ConfigError


def learner_gpus(device: str, visible: str | None, world: int = 1) -> list[str]:
    """The physical GPUs (as CUDA_VISIBLE_DEVICES names them) the learner's processes use: under
    torchrun rank r takes cuda:r, else `learner.device` ("" or "cuda": cuda:0)."""
    names = visible.split(",") if visible else None
    if world > 1:
        local = list(range(world))
    elif device in ("", "cuda"):
        local = [0]
    elif device.startswith("cuda:"):
        local = [int(device.split(":", 1)[1])]
    else:
        return []  # cpu
    return [names[i] if names and i < len(names) else str(i) for i in local]


def check_placement(cfg: Config, visible: str | None, world: int = 1, cuda: bool = True) -> None:
    """Refuse a learner GPU that a generator also gets, and a generator device list that does not
    hold `generator.tensor_parallel_size` GPUs; each error names the fields to change."""
    gc = cfg.generator
    for i, entry in enumerate(gc.devices):
        gpus = [d for d in entry.split(",") if d.strip()]
        if len(gpus) != gc.tensor_parallel_size:
            raise ConfigError(f"generator.devices[{i}] = {entry!r} holds {len(gpus)} GPU(s), but "
                              f"generator.tensor_parallel_size = {gc.tensor_parallel_size}: each generator's entry "
                              f"lists exactly its tensor-parallel GPUs (e.g. \"0,1\" for a size of 2)")
    if cuda and gc.count and not gc.devices and cfg.weights.backend == "nccl" and world == 1:
        raise ConfigError("weights.backend = \"nccl\" with no generator.devices: the launched generators would take "
                          "the learner's GPU, and NCCL refuses two ranks on one GPU; list their GPUs in "
                          "generator.devices, or leave weights.backend = \"auto\" (gloo through host memory)")
    if not cuda or not gc.devices or not gc.count:
        return  # no GPU, or no generator launched beside the learner (they join from other nodes)
    taken = {g.strip(): i for i, entry in enumerate(gc.devices) for g in entry.split(",")}
    for gpu in learner_gpus(cfg.learner.device, visible, world):
        if gpu in taken and cfg.weights.backend == "gloo" and world == 1:
            if gc.gpu_memory_utilization > 0.6:
                raise ConfigError(f"the learner shares GPU {gpu} with generator {taken[gpu]}, whose vLLM engine may "
                                  f"take generator.gpu_memory_utilization = {gc.gpu_memory_utilization} of it: "
                                  "leave the learner room (at most 0.6; configs/gpu/one-gpu-qwen2.5-0.5b.toml uses 0.3)")
            continue  # one card for both, by choice: weights go through host memory (NCCL cannot)
        if gpu in taken:
            raise ConfigError(
                f"the learner would run on GPU {gpu}, which generator.devices[{taken[gpu]}] gives to a generator "
                f"(learner.device = {cfg.learner.device!r}{', under torchrun: one GPU per rank' if world > 1 else ''}"
                f"): set learner.device (or the learner's CUDA_VISIBLE_DEVICES) to GPUs no generator uses, or, to share "
                f"one GPU on purpose, weights.backend = \"gloo\" (configs/gpu/one-gpu-qwen2.5-0.5b.toml)")

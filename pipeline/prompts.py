"""Problems become token ids the way the model expects them: through the tokenizer's chat template
(`data.chat_template = true`, or "auto" when the tokenizer has one, with `data.system_prompt` and
`data.instruction`), or through `data.prompt_template` for base models and the embedded tiny model. Prompts are token ids from here
on; nothing downstream re-tokenises text (docs/design.md §3, "token ids are the truth")."""

from __future__ import annotations

from pipeline.config import ConfigError, DataConfig


def render(tokenizer, question: str, data: DataConfig) -> list[int]:
    chat = data.chat_template
    if chat == "auto":  # the model's own format when it has one
        chat = bool(getattr(tokenizer, "chat_template", None))
    if not chat:
        return tokenizer.encode(data.prompt_template.format(question=question))
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat_template = true, but the model's tokenizer has no chat template "
                          "(a base model? set data.chat_template = false and a data.prompt_template)")
    user = f"{question}\n{data.instruction}" if data.instruction else question
    messages = ([{"role": "system", "content": data.system_prompt}] if data.system_prompt else []) + [
        {"role": "user", "content": user}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # some tokenizers answer with a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


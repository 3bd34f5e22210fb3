"""Problem sources: the dataset registry (local JSONL first, the hub when online) and reasoning-gym.

Every source yields `Problem`s with the same fields, so the learner and the verifiers never care where
a problem came from.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from pipeline.config import ConfigError, DataConfig, EvalConfig

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RLVR_DATA_DIR"
# The project sits beside shared/: <root>/main (this repo) and <root>/shared/data.
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# name -> public hub id, used only when the local folder lacks the dataset and the machine is online.
HUB_IDS = {
    "gsm8k": "openai/gsm8k",
    "math500": "HuggingFaceH4/MATH-500",
    "aime24": "HuggingFaceH4/aime_2024",
    "aime25": "math-ai/aime25",
    "amc23": "math-ai/amc23",
    "olympiadbench": "Hothan/OlympiadBench",
    "dapo_math_17k": "BytedTsinghua-SIA/DAPO-Math-17k",  # the DAPO / ERPO training set (hub only)
}

REASONING_GYM = "reasoning_gym:"


@dataclass(frozen=True)
class Problem:
    prompt_id: int
    question: str
    answer: str
    verifier: str  # "math" (math-verify) or "reasoning_gym:<task>"
    metadata: str = "{}"  # JSON, what the verifier needs besides the answer


def data_dir(cfg: DataConfig) -> Path:
    return Path(cfg.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _rows_from_hub(name: str, split: str) -> list[dict]:
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"data.source={name!r}: not in the local data folder, and the hub is offline")
    import datasets

    rows = []
    for r in datasets.load_dataset(HUB_IDS[name], "main" if name == "gsm8k" else None, split=split):
        answer = str(r.get("answer", ""))
        problem = r.get("problem") or r.get("question")
        if name == "gsm8k":  # GSM8K's answer field is a worked solution ending in '#### <n>'
            answer = answer.split("####")[-1].strip()
        if name == "dapo_math_17k":  # chat-formatted prompt, answer in reward_model.ground_truth
            problem = r["prompt"][0]["content"]
            answer = str(r["reward_model"]["ground_truth"])
        rows.append({"problem": problem, "answer": answer})
    return rows


def load_rows(name: str, split: str, cfg: DataConfig) -> list[dict]:
    path = data_dir(cfg) / name / f"{split}.jsonl"
    if path.is_file():
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if name in HUB_IDS:
        return _rows_from_hub(name, split)
    raise ConfigError(
        f"data.source={name!r}: no {path} and no hub id known; known names: {sorted(HUB_IDS)} "
        f"or '{REASONING_GYM}<task>'"
    )


def load_problems(cfg: DataConfig, *, split: str | None = None, size: int | None = None,
                  seed: int | None = None) -> list[Problem]:
    """The problems of `cfg.source`; rows lacking a problem or an answer are skipped and counted."""
    split = split or cfg.split
    if cfg.source.startswith(REASONING_GYM):
        return _reasoning_gym(cfg, size or cfg.size, cfg.seed if seed is None else seed)
    problems: list[Problem] = []
    skipped = 0
    for row in load_rows(cfg.source, split, cfg):
        problem, answer = row.get("problem"), row.get("answer")
        if not isinstance(problem, str) or not problem.strip() or answer is None or str(answer) == "":
            skipped += 1
            continue
        problems.append(Problem(len(problems), problem, str(answer), "math"))
    if skipped:
        log.warning("data %s/%s: skipped %d rows without a problem or an answer", cfg.source, split, skipped)
    if not problems:
        raise ConfigError(f"data.source={cfg.source!r} split {split!r}: no usable rows")
    return problems


def _reasoning_gym(cfg: DataConfig, size: int, seed: int) -> list[Problem]:
    import reasoning_gym

    task = cfg.source[len(REASONING_GYM):]
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **cfg.task_options)
    except Exception as exc:  # unknown task name or option: say which
        raise ConfigError(f"data.source={cfg.source!r} / data.task_options: {exc}") from None
    return [
        Problem(i, e["question"], str(e["answer"]), cfg.source, json.dumps(e["metadata"], default=list))
        for i, e in enumerate(dataset)
    ]


def heldout_problems(data: DataConfig, ev: EvalConfig, source: str | None = None) -> tuple[str, list[Problem]]:
    """Evaluation problems: `source` (default eval.source, else the training source). Procedural
    sources draw a fresh seed, so held-out problems are not the training ones."""
    source = source or ev.source or data.source
    cfg = msgspec.structs.replace(data, source=source, split=ev.split)
    problems = load_problems(cfg, split=ev.split, size=ev.size, seed=ev.seed)
    return source, problems[:ev.size]

"""Problem sources: the dataset registry (local JSONL first, the hub when online) and reasoning-gym.

Every source yields `Problem`s with the same fields, so the learner and the verifiers never care where
a problem came from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import msgspec

from pipeline.config import ConfigError, DataConfig, EvalConfig
from pipeline.problems import Problem
from pipeline.traces import PREFIX as TRACES, traced_problems

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
# How each dataset's responses state their final answer (actors/answers.py); others: "boxed".
ANSWER_STYLE = {"gsm8k": "marker"}


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
            answer = parse_gold(answer)
        if name == "dapo_math_17k":  # chat-formatted prompt, answer in reward_model.ground_truth
            problem = r["prompt"][0]["content"]
            answer = str(r["reward_model"]["ground_truth"])
        rows.append({"problem": problem, "answer": answer})
    return rows


FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _local_files(source: str, split: str) -> list[Path] | None:
    """The files a local `data.source` names: a file, or a folder's `<split>.*` (else all its data
    files); None when the source is not a local path."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_TYPES)
        named = [p for p in files if p.stem == split]
        if not files:
            raise ConfigError(f"data.source={source!r}: the folder holds no .jsonl, .json or .parquet file")
        return named or files
    if path.suffix in FILE_TYPES or source.startswith((".", "/", "~")):
        raise ConfigError(f"data.source={source!r}: no such file or folder")
    return None


def _rows_from_files(files: list[Path]) -> list[dict]:
    import datasets

    kinds = {FILE_TYPES[p.suffix] for p in files}
    if len(kinds) > 1:
        raise ConfigError(f"data.source: mixed file types {sorted(str(p) for p in files)}; keep one kind per folder")
    try:
        table = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # a malformed file: say which
        raise ConfigError(f"data.source: cannot read {', '.join(map(str, files))}: {exc}") from None
    return table.to_list()


def load_rows(name: str, split: str, cfg: DataConfig) -> list[dict]:
    files = _local_files(name, split)
    if files is not None:
        return _rows_from_files(files)
    path = data_dir(cfg) / name / f"{split}.jsonl"
    if path.is_file():
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if name in HUB_IDS:
        return _rows_from_hub(name, split)
    if "/" in name:  # a hub id of the user's own
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"data.source={name!r}: not a local file or folder, and the hub is offline")
        import datasets

        return datasets.load_dataset(name, split=split).to_list()
    raise ConfigError(
        f"data.source={name!r}: no {path} and no hub id known; known names: {sorted(HUB_IDS)}, "
        f"'{REASONING_GYM}<task>', a .jsonl / .json / .parquet file or folder, or a hub id 'owner/name'"
    )


def parse_gold(answer) -> str:
    """A gold answer as the verifier compares it: GSM8K's worked solution ending in '#### 42' -> '42'."""
    text = str(answer).strip()
    return text.rsplit("####", 1)[1].strip() if "####" in text else text


def _gold_is_parsable(answer: str) -> bool:
    """math-verify can read it: braces balance, and its parse is not empty (math-verify falls back to
    the raw string for what it cannot read as math, which only an identical string would match)."""
    from math_verify import parse

    if answer.count("{") != answer.count("}"):
        return False
    quiet = logging.getLogger("math_verify.parser")
    level, quiet.level = quiet.level, logging.ERROR  # it warns that we run it without signal.alarm
    try:
        return bool(parse(f"\\boxed{{{answer}}}", parsing_timeout=None))  # no signal.alarm: any thread
    except Exception:  # noqa: BLE001 - an answer math-verify cannot read
        return False
    finally:
        quiet.level = level


def load_problems(cfg: DataConfig, *, split: str | None = None, size: int | None = None,
                  seed: int | None = None) -> list[Problem]:
    """The problems of `cfg.source`. A missing column or an empty dataset is an error naming the
    source and the column; rows lacking a problem or an answer, or whose gold answer math-verify
    cannot read (every reward would be 0), are skipped, counted and reported."""
    split = split or cfg.split
    if cfg.source.startswith(REASONING_GYM):
        return _reasoning_gym(cfg, size or cfg.size, cfg.seed if seed is None else seed)
    if cfg.source.startswith(TRACES):
        return traced_problems(cfg.source, size or cfg.size, cfg.seed if seed is None else seed, cfg.task_options)
    rows = load_rows(cfg.source, split, cfg)
    if not rows:
        raise ConfigError(f"data.source={cfg.source!r} split {split!r}: the dataset is empty")
    q, a = cfg.fields.question, cfg.fields.answer
    for column, field in ((q, "data.fields.question"), (a, "data.fields.answer")):
        if not any(column in row for row in rows[:100]):
            raise ConfigError(f"data.source={cfg.source!r}: no column {column!r} ({field}); its columns are "
                              f"{sorted(rows[0])}")
    problems: list[Problem] = []
    skipped = {"no problem or answer": [], "gold answer unreadable": []}
    verifier = f"math:{cfg.answer_style or ANSWER_STYLE.get(cfg.source, 'boxed')}"
    for i, row in enumerate(rows):
        problem, answer = row.get(q), row.get(a)
        if not isinstance(problem, str) or not problem.strip() or answer is None or str(answer).strip() == "":
            skipped["no problem or answer"].append(i)
            continue
        gold = parse_gold(answer)
        if not _gold_is_parsable(gold):
            skipped["gold answer unreadable"].append(i)
            continue
        problems.append(Problem(len(problems), problem, gold, verifier))
    for why, at in skipped.items():
        if at:
            msg = f"data {cfg.source}/{split}: skipped {len(at)} rows ({why}), e.g. row(s) {at[:5]}"
            log.warning(msg)
            print(msg)
    if not problems:
        raise ConfigError(f"data.source={cfg.source!r} split {split!r}: no usable rows ({len(rows)} read, "
                          f"{sum(map(len, skipped.values()))} skipped)")
    return problems


def _reasoning_gym(cfg: DataConfig, size: int, seed: int) -> list[Problem]:
    import reasoning_gym

    task = cfg.source[len(REASONING_GYM):]
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **cfg.task_options)
    except Exception as exc:  # unknown task name or option: say which
        raise ConfigError(f"data.source={cfg.source!r} / data.task_options: {exc}") from None
    # with an answer style, the scorer sees the extracted final answer, not the whole response
    verifier = f"{cfg.source}@{cfg.answer_style}" if cfg.answer_style else cfg.source
    return [
        Problem(i, e["question"], str(e["answer"]), verifier, json.dumps(e["metadata"], default=list))
        for i, e in enumerate(dataset)
    ]


def heldout_problems(data: DataConfig, ev: EvalConfig, source: str | None = None) -> tuple[str, list[Problem]]:
    """Evaluation problems: `source` (default eval.source, else the training source). Procedural
    sources draw a fresh seed, so held-out problems are not the training ones."""
    source = source or ev.source or data.source
    cfg = msgspec.structs.replace(data, source=source, split=ev.split)
    problems = load_problems(cfg, split=ev.split, size=ev.size, seed=ev.seed)
    return source, problems[:ev.size]

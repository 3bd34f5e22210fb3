"""Your own dataset (issue 11): local .jsonl / .json / .parquet files and folders read with `datasets`,
columns named by data.fields, GSM8K's '#### 42' gold answers, and clear errors or counted skips for
bad input: never a silent zero reward for a whole run."""

import json

import pytest

from pipeline.config import ConfigError, DataConfig, DataFields
from pipeline.data import load_problems
from tests.conftest import SHARED_DATA


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_local_jsonl_file_with_its_own_columns(tmp_path, capsys):
    f = _jsonl(tmp_path / "mine.jsonl", [
        {"q": "What is 6 x 7?", "sol": "6 x 7 = 42\n#### 42"},  # GSM8K-style worked answer
        {"q": "Half of 1?", "sol": "\\frac{1}{2}"},
        {"q": "", "sol": "3"},  # no problem: skipped and counted
        {"q": "Unreadable gold?", "sol": "\\frac{"},  # math-verify cannot read it: skipped and counted
    ])
    problems = load_problems(DataConfig(source=str(f), fields=DataFields(question="q", answer="sol")))
    assert [(p.question, p.answer) for p in problems] == [("What is 6 x 7?", "42"), ("Half of 1?", "\\frac{1}{2}")]
    assert all(p.verifier == "math:boxed" for p in problems)
    out = capsys.readouterr().out
    assert "skipped 1 rows (no problem or answer), e.g. row(s) [2]" in out
    assert "skipped 1 rows (gold answer unreadable), e.g. row(s) [3]" in out


def test_parquet_and_a_folder_by_split(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    folder.mkdir()
    datasets.Dataset.from_list([{"problem": "1+1", "answer": "2"}]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list([{"problem": "2+2", "answer": "4"}, {"problem": "3+3", "answer": "6"}]).to_parquet(
        str(folder / "test.parquet"))
    assert [p.answer for p in load_problems(DataConfig(source=str(folder), split="test"))] == ["4", "6"]
    assert [p.answer for p in load_problems(DataConfig(source=str(folder / "train.parquet")))] == ["2"]


def test_bad_sources_name_the_file_and_the_column(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", [{"question": "1+1", "answer": "2"}])
    with pytest.raises(ConfigError, match=r"no column 'problem' \(data.fields.question\).*\['answer', 'question'\]"):
        load_problems(DataConfig(source=str(f)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_problems(DataConfig(source=str(empty)))
    with pytest.raises(ConfigError, match="no such file"):
        load_problems(DataConfig(source=str(tmp_path / "missing.jsonl")))
    (tmp_path / "none").mkdir()
    with pytest.raises(ConfigError, match="holds no .jsonl"):
        load_problems(DataConfig(source=str(tmp_path / "none")))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "\\frac{"}])
    with pytest.raises(ConfigError, match="no usable rows"):  # not a run of silent zero rewards
        load_problems(DataConfig(source=str(bad)))


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").exists(), reason="../shared/data not present")
def test_gsm8k_by_name_reads_its_answers_with_the_marker_style():
    problems = load_problems(DataConfig(source="gsm8k", split="test", data_dir=str(SHARED_DATA)))
    assert len(problems) == 1319 and problems[0].answer == "18" and problems[0].verifier == "math:marker"

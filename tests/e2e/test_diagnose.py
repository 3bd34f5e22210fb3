"""`run.py diagnose` (ERPO's temperature diagnostic) end to end on the tiny model: its figures are
those of the groups it recorded, whatever the model's numerics."""

import json
import subprocess
import sys

from tests.conftest import ROOT, CACHE_ARGS


def test_the_diagnostic_finds_residual_prompts_and_reports_each_temperature_from_its_groups(tmp_path):
    out = tmp_path / "diag"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "diagnose", "--prompts", "24", "--samples", "4",
                        "--temperatures", "1.0", "1.5", "--out", str(out), *CACHE_ARGS,
                        "--log.progress", "false"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "diagnose.json").read_text())
    groups = [json.loads(line) for line in (out / "diagnose.groups.jsonl").read_text().splitlines()]
    first = [g for g in groups if g["pass"] == "t0"]
    residual = {g["problem"] for g in first if all(g["correct"])}
    assert len(first) == report["prompts"] == 24 and report["residual"] == len(residual)
    assert [rung["temperature"] for rung in report["rungs"]] == [1.0, 1.5]
    for rung in report["rungs"]:
        ladder = [g for g in groups if g["pass"] == "ladder" and g["temperature"] == rung["temperature"]]
        assert {g["problem"] for g in ladder} == residual and rung["prompts"] == len(residual)
        responses = [ok for g in ladder for ok in g["correct"]]
        if ladder:
            assert rung["reactivated"] == sum(0 < sum(g["correct"]) < 4 for g in ladder) / len(ladder)
            assert rung["wrong"] == responses.count(False) / len(responses)
            assert rung["mean_tokens"] == sum(sum(g["tokens"]) for g in ladder) / len(responses)
    assert (out / "diagnose.png").stat().st_size > 0
    assert f"{report['residual']} of 24 prompts are residual at T0" in r.stdout

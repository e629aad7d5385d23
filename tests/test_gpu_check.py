# SPDX-License-Identifier: Apache-2.0
"""benchmarks/gpu_check.py --tiny: the GPU check's exact code on tiny configs, so it cannot rot between GPU windows."""

import json
import sys

import pytest
from conftest import REPO, run_command

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def test_every_part_runs_and_reports_its_goal_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = run_command(["benchmarks/gpu_check.py", "--tiny", "--out", str(out)], timeout=1200)
    data = json.loads(out.read_text())
    assert data["tiny"] is True and [p["part"] for p in data["parts"]] == gpu_check.PARTS
    for part in data["parts"]:
        assert part["status"] == "ok", part
        rows = {r["key"]: r for r in part["rows"]}
        for key, what, *_ in gpu_check.GOALS[part["part"]]:
            value = rows[key]["value"]
            if key.endswith("_gib"):
                assert value is None  # no GPU memory on the CPU dry run
            else:
                assert isinstance(value, float) and value > 0, (part["part"], key, value)
            assert what in res.stdout  # the printed table names every goal
        assert all(r["ok"] is None for r in part["rows"])  # no pass/fail verdicts from tiny CPU numbers
    assert data["parts"][-1]["rows"], "the score part returned no numbers"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA refusal")
def test_real_run_needs_cuda(tmp_path):
    res = run_command(["benchmarks/gpu_check.py", "--out", str(tmp_path / "x.json")], check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: the GPU check needs CUDA")
    assert "Traceback" not in res.stderr and not (tmp_path / "x.json").exists()

"""benchmarks/device_check.sh: one JSON report for an accelerator session, whose parts
report a figure or a named error, and whose failing parts do not take the others down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"

# Each part's headline figures, as paths into its entry of the report (smoke sizes).
SMOKE_FIGURES = {
    "refine": [("candidates_per_second", "64")],
    "train": [("samples_per_second",), ("mfu",)],
    "decode": [("tokens_per_second", "greedy"), ("tokens_per_second", "sample_16")],
    "search": [("evaluations_per_second",)],
}


def run_check(*args: str, env: dict | None = None, timeout: float = 200) -> tuple[dict, str]:
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "DEVICE_CHECK_PYTHON": sys.executable, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def named_error(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("error"), str) and value["error"]


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.smoke
@pytest.mark.slow  # about 60-90 s on the 2-core CPU: five processes, each compiling
def test_smoke_run_reports_every_part(tmp_path):
    out = tmp_path / "report.json"
    report, log = run_check("--smoke", "--out", str(out), "--tmp", str(tmp_path / "parts"))
    assert json.loads(out.read_text()) == report
    assert isinstance(report["device"], str) and report["device"], report["device"]
    assert isinstance(report["info"]["cpu"], str) and report["info"]["cpu"], report["info"]
    assert report["smoke"] is True and report["backend"] == "cpu"
    assert report["jax"] and report["total_seconds"] < 120
    for part, figures in SMOKE_FIGURES.items():
        entry = report[part]
        if "error" in entry:
            # A busy machine may run a part out of time; a crash or a changed output
            # format of a benchmark is a failure.
            assert named_error(entry) and "timed out" in entry["error"], (part, entry, log)
            continue
        for path in figures:
            value = entry
            for key in path:
                value = value[key]
            assert number(value) or named_error(value), (part, path, value)
    targets = {"refine": ("target_candidates_per_second_at_8192", 50_000),
               "train": ("target_mfu", 0.30)}
    for part, (key, target) in targets.items():
        if "error" not in report[part]:  # a part that timed out (checked above) has none
            assert report[part][key] == target, (part, report[part])


def test_a_failing_part_is_named_and_the_others_still_report(tmp_path):
    out = tmp_path / "report.json"
    report, _ = run_check(
        "--smoke", "--parts", "refine,info,search", "--limit", "search=3", "--out", str(out),
        "--tmp", str(tmp_path / "parts"), env={"DEVICE_CHECK_FAIL": "refine,search:hang"}, timeout=120)
    assert json.loads(out.read_text()) == report
    assert "exit status 1" in report["refine"]["error"]
    assert "DEVICE_CHECK_FAIL=refine" in report["refine"]["error"]
    assert "timed out after its limit of 3 s" in report["search"]["error"]
    # The part after the failure ran and found the device.
    assert isinstance(report["device"], str) and report["device"]
    assert report["info"]["jax"] == report["jax"] and report["info"]["jaxsr_import"] == "ok"
    assert "train" not in report and "decode" not in report

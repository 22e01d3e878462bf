"""Helpers of ``benchmarks/device_check.sh``: the device facts, and the one JSON report.

    python benchmarks/device_report.py info           # device name, backend, versions (JSON)
    python benchmarks/device_report.py assemble DIR   # DIR's part outputs -> one JSON object

``assemble`` reads, for each part NAME, ``DIR/NAME.meta`` (exit status, start and end
times, time limit, or why it was not run), ``DIR/NAME.json`` (the benchmark's stdout) and
``DIR/NAME.log`` (its stderr), plus ``DIR/run.json`` (the settings of the run). It picks the
figures out of each benchmark's own JSON and puts each target next to its figure. A part
that failed, timed out or was not run becomes ``{"error": "..."}``, and so does a single
figure its benchmark did not produce; the other parts report regardless. It imports only
the standard library, so that a broken jax install still gets a report that says so.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PARTS = ("info", "refine", "train", "decode", "search")
# Targets for an H100-class GPU, kept next to the figures they judge.
TARGET_REFINE_AT_8192 = 50_000  # candidates/s, batched solver, B = 8,192
TARGET_MFU = 0.30  # paper config, bfloat16


class Missing(Exception):
    """A figure the benchmark's JSON does not hold."""


# ----------------------------------------------------------------------------- info


def info() -> dict:
    import os
    import platform

    import jax
    import jaxlib

    devices = jax.devices()
    out = {"device": str(devices[0].device_kind), "platform": devices[0].platform,
           "backend": jax.default_backend(), "device_count": len(devices),
           "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count()}
    try:  # not every backend keeps memory statistics
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
        if limit:
            out["memory_gib"] = round(limit / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    # Every other part imports jaxsr: an import failure named here explains them all.
    try:
        from jaxsr.machine import cpu_description

        out["cpu"] = cpu_description()
        out["jaxsr_import"] = "ok"
    except Exception as error:  # noqa: BLE001
        out["jaxsr_import"] = f"{type(error).__name__}: {error}"
    return out


# ----------------------------------------------------------------------------- parts


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(raw: dict, *keys):
    value = raw
    for key in keys:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise Missing("/".join(map(str, keys)))
        value = value[key]
    return value


def _figure(raw: dict, *keys):
    """The number at ``keys``, or a named error where the benchmark gave none (the
    benchmarks mark a setting they left out with ``{"skipped": reason}``)."""
    value = raw
    for depth, key in enumerate(keys):
        if isinstance(value, dict) and "skipped" in value:
            break
        if not isinstance(value, dict) or value.get(key) is None:
            return {"error": f"not in the benchmark's output: {'/'.join(keys[:depth + 1])}"}
        value = value[key]
    if isinstance(value, dict) and "skipped" in value:
        return {"error": f"skipped by the benchmark: {value['skipped']}"}
    return value


def part_info(raw: dict, run: dict) -> dict:
    _get(raw, "device")
    return raw


def part_refine(raw: dict, run: dict) -> dict:
    sizes = [str(b) for b in run["refine_sizes"]]
    rates = {b: _figure(raw, "candidates_per_second", b) for b in sizes}
    out = {"solver": "batched", "candidates_per_second": rates,
           "first_call_seconds": {b: _figure(raw, "solvers", "batched", "first_call_seconds", b)
                                  for b in sizes},
           "converged_fraction": _figure(raw, "converged_fraction"),
           "speedup_vs_scipy": _figure(raw, "speedup_vs_scipy"),
           "target_candidates_per_second_at_8192": TARGET_REFINE_AT_8192}
    if _number(rates.get("8192")):
        out["meets_target"] = rates["8192"] >= TARGET_REFINE_AT_8192
    return out


def part_train(raw: dict, run: dict) -> dict:
    name = run["train_config"]
    entry = _get(raw, name)
    mfu = entry.get("mfu")
    if mfu is None:
        mfu = {"error": entry.get("mfu_error", "the benchmark computed no MFU")}
    out = {"config": name, "dtype": entry.get("dtype"),
           "samples_per_second": _figure(entry, "jax", "samples_per_second"),
           "points_per_second": _figure(entry, "jax", "points_per_second"),
           "seconds_per_step": _figure(entry, "jax", "seconds_per_step"),
           "compile_seconds": _figure(entry, "jax", "compile_seconds"),
           "tokens_per_step": entry.get("tokens_per_step"),
           "mfu": mfu, "target_mfu": TARGET_MFU,
           "peak_tflops_per_device": entry.get("peak_tflops_per_device")}
    if _number(mfu):
        out["meets_target"] = mfu >= TARGET_MFU
    return out


def part_decode(raw: dict, run: dict) -> dict:
    name = run["decode_config"]
    entry = _get(raw, name)
    strategies = ["greedy", f"sample_{run['decode_samples']}"]
    return {"config": name, "length": raw.get("length"),
            "samples_per_bag": run["decode_samples"],
            "tokens_per_second": {s: _figure(entry, s, "tokens_per_second")
                                  for s in strategies},
            "compile_seconds": {s: _figure(entry, s, "compile_seconds") for s in strategies}}


def _rounded(value, digits: int):
    return round(value, digits) if _number(value) else value


def part_search(raw: dict, run: dict) -> dict:
    size = str(run["search_population"])
    return {"population": run["search_population"],
            "evaluations_per_second": _rounded(_figure(raw, "evaluations_per_second", size), 1),
            "host_fraction": _rounded(_figure(raw, "host_fraction", size), 3)}


EXTRACT = {"info": part_info, "refine": part_refine, "train": part_train,
           "decode": part_decode, "search": part_search}


# ----------------------------------------------------------------------------- assembly


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_json_object(text: str) -> dict | None:
    """The benchmarks print one JSON line; anything a library printed before it is skipped."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _last_log_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


def part_report(directory: Path, name: str, run: dict) -> dict:
    meta = _read_json(directory / f"{name}.meta")
    if meta is None:
        return {"error": "not run: the check stopped before this part"}
    if meta.get("skipped"):
        return {"error": f"not run: {meta['skipped']}"}
    seconds = round(float(meta["end"]) - float(meta["start"]), 1)
    if meta.get("interrupted"):
        return {"error": f"interrupted after {seconds} s: the check was stopped from outside",
                "seconds": seconds}
    rc, last = int(meta["rc"]), _last_log_line(directory / f"{name}.log")
    tail = f" (last log line: {last})" if last else ""
    # timeout(1) exits 124 when the limit is reached and 137 when it had to kill.
    if rc in (124, 137):
        return {"error": f"timed out after its limit of {meta['limit']} s{tail}",
                "seconds": seconds}
    if rc != 0:
        return {"error": f"exit status {rc}: {last or 'no output on stderr'}",
                "seconds": seconds}
    try:
        stdout = (directory / f"{name}.json").read_text(errors="replace")
    except OSError:
        stdout = ""
    raw = _last_json_object(stdout)
    if raw is None:
        return {"error": f"no JSON object on stdout{tail}", "seconds": seconds}
    try:
        out = EXTRACT[name](raw, run)
    except Missing as missing:
        return {"error": f"unexpected output: no {missing}", "seconds": seconds}
    return {**out, "seconds": seconds}


def assemble(directory: Path) -> dict:
    run = _read_json(directory / "run.json") or {}
    parts = {name: part_report(directory, name, run) for name in run.get("parts", PARTS)}
    facts = parts.get("info", {"error": "not run: not among --parts"})
    report = {
        "device": facts.get("device", {"error": f"unknown: info part: {facts.get('error')}"}),
        "backend": facts.get("backend"),
        "jax": facts.get("jax"),
        "smoke": bool(run.get("smoke")),
        **{name: parts[name] for name in parts if name != "info"},
        "info": facts,
    }
    if run.get("smoke"):
        report["note"] = ("smoke run: tiny sizes on CPU, nominal peak for MFU; the figures "
                          "only show that every part runs, and the targets do not apply")
    elif report["backend"] == "cpu":
        report["note"] = "jax ran on the CPU: no accelerator figures were measured"
    install = directory / "install.txt"
    if install.exists():  # written by --install-cuda: its outcome, then its message
        status, _, message = install.read_text(errors="replace").strip().partition("\n")
        report["install_cuda"] = {"status": status, "message": message.strip()}
    try:  # the report is rewritten after every part: the total so far
        report["total_seconds"] = round(time.time() - float(run["start"]), 1)
    except (KeyError, TypeError, ValueError):
        pass
    report["budget_seconds"] = run.get("budget")
    report["logs"] = str(directory)
    return report


def main(argv: list[str]) -> int:
    if argv[:1] == ["info"]:
        print(json.dumps(info()))
        return 0
    if argv[:1] == ["assemble"] and len(argv) == 2:
        print(json.dumps(assemble(Path(argv[1]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

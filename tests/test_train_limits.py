"""``jaxsr train --max-time`` (stop at a wall-time limit, resume exactly) and ``--export``
(re-export only when the validation accuracy improves)."""

import json
import time

import pytest
from test_train import COMPARED, setup_config, setup_overrides

from jaxsr import cli
from jaxsr.train import Checkpoints, read_csv, train
from jaxsr.weights import load_weights

LIMIT = 10.0  # seconds; the final checkpoint adds 0.3-0.7 s after the last step here


@pytest.mark.slow
def test_max_time_stops_within_ten_percent_and_resumes_exactly(tmp_path):
    train(setup_config(tmp_path / "warm", steps=2))  # compiles outside the timed call
    workdir = tmp_path / "timed"
    config = setup_config(workdir, steps=10**6, checkpoint_every=10**6, log_every=1)
    start = time.monotonic()
    stopped = train(config, max_time=LIMIT)
    elapsed = time.monotonic() - start
    assert stopped.stopped == "time" and stopped.step > 5
    assert abs(elapsed - LIMIT) <= 0.1 * LIMIT, elapsed
    with Checkpoints(workdir) as checkpoints:
        assert checkpoints.latest_step() == stopped.step

    total = stopped.step + 3
    assert train(config.replace(steps=total)).step == total
    train(setup_config(tmp_path / "straight", steps=total, log_every=1))
    resumed, straight = (read_csv(tmp_path / name / "train.csv") for name in ("timed", "straight"))
    assert [row["step"] for row in resumed] == list(range(1, total + 1))
    for ours, theirs in zip(resumed, straight, strict=True):
        assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}, ours["step"]


def test_cli_max_time_says_where_it_stopped(tmp_path, capsys):
    args = ["train", "--config", "tiny", "--workdir", str(tmp_path), "--steps", "100000",
            "--max-time", "1", *[a for o in setup_overrides() for a in ("--set", o)]]
    assert cli.main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "time limit" in line]
    assert len(lines) == 1 and lines[0].startswith("stopped at the time limit at step ")
    assert cli.main(["train", "--workdir", str(tmp_path), "--max-time", "0"]) == 2
    assert "--max-time" in capsys.readouterr().err


def test_export_writes_first_then_only_when_accuracy_improves(tmp_path, capsys):
    overrides = setup_overrides(validate_every=2, validation_size=3, validation_max_len=6)
    args = ["train", "--config", "tiny", "--workdir", str(tmp_path), "--steps", "2",
            *[a for o in overrides for a in ("--set", o)], "--export"]
    assert cli.main(args) == 0  # no folder given: WORKDIR/weights
    assert "its first export" in capsys.readouterr().out
    out = tmp_path / "weights"
    record = load_weights(out).metadata["validation"]
    assert record["step"] == 2 and "acc_0.1" in record  # the row training wrote at step 2

    assert cli.main(["train", "--workdir", str(tmp_path), "--export"]) == 0  # same accuracy
    assert "kept the previous export" in capsys.readouterr().out
    meta_path = out / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["metadata"]["validation"]["acc_0.1"] = -1.0  # a worse previous export
    meta_path.write_text(json.dumps(meta))
    assert cli.main(["train", "--workdir", str(tmp_path), "--export", str(out)]) == 0
    assert "improves on the previous export" in capsys.readouterr().out
    assert load_weights(out).metadata["validation"]["acc_0.1"] == pytest.approx(
        record["acc_0.1"])

"""Nothing is lost when a writer dies: result files, weights and training checkpoints are
either the old version or the new one, never half of one. A killed process is simulated with
SIGKILL (no cleanup of any kind runs) in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxsr.fileio import TEMP_PREFIX, atomic_files, atomic_write
from jaxsr.model import get_config, init_params
from jaxsr.train import Checkpoints, load_config, read_csv, train
from jaxsr.weights import load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (CPU JAX), returning its result."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                          capture_output=True, text=True, timeout=300)


def _killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


# ---------------------------------------------------------------------------- the helper


def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "b.txt", "é").read_text(encoding="utf-8") == "é"
    atomic_write(tmp_path / "c.npy", lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.arange(3))
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (tmp_path / "b.txt").stat().st_mode == plain.stat().st_mode  # not mkstemp's 0600
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "table.csv", "old\n")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_related_files_are_all_replaced_or_none(tmp_path):
    atomic_write(tmp_path / "a", "old a")
    atomic_write(tmp_path / "b", "old b")
    with pytest.raises(RuntimeError), atomic_files() as files:
        files.write(tmp_path / "a", "new a")
        raise RuntimeError("before b was written")
    assert (tmp_path / "a").read_text() == "old a" and (tmp_path / "b").read_text() == "old b"
    with atomic_files() as files:
        written = files.write(tmp_path / "a", "new a")
        assert written.read_text() == "new a" and (tmp_path / "a").read_text() == "old a"
        files.write(tmp_path / "b", "new b")
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"


def test_sigkill_in_the_middle_of_a_write_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "provenance.json", '{"run": 1}')
    _killed(_python(f"""
        import os, signal
        from jaxsr.fileio import atomic_write

        def half_then_die(f):
            f.write(b'{{"run": 2, "trunc')
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write({str(path)!r}, half_then_die)
    """))
    assert json.loads(path.read_text()) == {"run": 1}


# ---------------------------------------------------------------------------- weights, results


def test_weights_killed_while_being_saved_keep_the_previous_export(tmp_path):
    config = get_config("tiny")
    out = save_weights(tmp_path / "w", init_params(config, 1), config, metadata={"run": 1})
    _killed(_python(f"""
        import os, signal
        import numpy as np
        from jaxsr.model import get_config, init_params
        from jaxsr.weights import save_weights

        def savez_half_then_die(f, **arrays):  # dies with params.npz half written
            f.write(b"PK\\x03\\x04" + bytes(1000))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        np.savez = savez_half_then_die
        config = get_config("tiny")
        save_weights({str(out)!r}, init_params(config, 2), config, metadata={{"run": 2}})
    """))
    assert load_weights(out).metadata == {"run": 1}  # checksum and shapes still hold


def test_experiment_tables_killed_while_being_written_keep_the_previous_ones(tmp_path):
    from experiments import common

    common.write_table(pd.DataFrame({"r2": [0.5]}), tmp_path, "summary", title="run 1")
    _killed(_python(f"""
        import os, signal
        import pandas as pd
        from pathlib import Path
        from experiments import common

        frame = pd.DataFrame({{"r2": [0.9]}})
        real = pd.DataFrame.to_csv
        def to_csv_then_die(self, *args, **kwargs):
            text = real(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        pd.DataFrame.to_csv = to_csv_then_die
        common.write_table(frame, Path({str(tmp_path)!r}), "summary", title="run 2")
    """))
    assert pd.read_csv(tmp_path / "summary.csv")["r2"].tolist() == [0.5]
    assert "run 1" in (tmp_path / "summary.md").read_text()


# ---------------------------------------------------------------------------- checkpoints

# A small run: 4 steps of the tiny model on one-variable formulas, checkpoints at 2 and 4.
SETUP = {
    "generator": {"max_input_dimension": 1, "max_unary_ops": 1, "max_binary_ops_offset": 2,
                  "max_points": 20},
    "point_buckets": [20], "token_buckets": [40], "tokens_per_device": 160, "micro_batch": 4,
    "lr": 1e-3, "warmup_steps": 10, "workers": 0, "log_every": 1, "checkpoint_every": 2,
    "keep_checkpoints": 10, "validate_every": 0, "steps": 4,
}
COMPARED = ("loss", "lr", "grad_norm", "samples", "points", "tokens")


def _config(workdir: Path):
    return load_config("tiny", [f"{k}={json.dumps(v)}" for k, v in
                                {**SETUP, "workdir": str(workdir)}.items()])


# In the subprocess: orbax's commit of step 4 (the rename of its temporary directory, after
# every array and the JSON are written) is where the process dies.
KILL_AT_COMMIT = """
    import json, os, signal, sys
    from orbax.checkpoint._src.path import atomicity

    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def die_before_step_4_commits(self):
        if self.get_final().name == "4":
            assert any(self.get().iterdir())  # the step's files are written, not committed
            os.kill(os.getpid(), signal.SIGKILL)
        return await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = die_before_step_4_commits
    from jaxsr.train import load_config, train
    setup, workdir = json.loads(sys.argv[1]), sys.argv[2]
    train(load_config("tiny", [f"{k}={json.dumps(v)}" for k, v in
                               {**setup, "workdir": workdir}.items()]))
"""


@pytest.mark.slow
def test_a_run_killed_while_checkpointing_resumes_exactly(tmp_path):
    """orbax writes a step into a temporary directory and renames it when complete: a run
    SIGKILLed before that rename resumes from the previous checkpoint, and every step's loss
    equals an uninterrupted run's."""
    killed_dir = tmp_path / "killed"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_AT_COMMIT), json.dumps(SETUP),
         str(killed_dir)],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=300)
    _killed(result)
    leftovers = [p.name for p in (killed_dir / "checkpoints").iterdir() if not p.name.isdigit()]
    assert leftovers and all(".orbax-checkpoint-tmp" in name for name in leftovers)
    with Checkpoints(killed_dir) as checkpoints:
        assert checkpoints.all_steps() == [2]  # the uncommitted step 4 is not a checkpoint

    resumed = train(_config(killed_dir))
    reference = train(_config(tmp_path / "reference"))
    assert resumed.step == reference.step == 4
    ours, theirs = read_csv(killed_dir / "train.csv"), read_csv(tmp_path / "reference" /
                                                                  "train.csv")
    assert [row["step"] for row in ours] == [1, 2, 3, 4]
    for a, b in zip(ours, theirs):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}, a["step"]

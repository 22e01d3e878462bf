"""The trainer: loss, schedule, configs, checkpoints, exact resumption, devices, CLI.

Every run uses one small test setup (the tiny model on one-variable data, one batch shape
of 8 x 20 points x 40 tokens), so the in-process runs share one compiled step. The two
subprocess runs (8 simulated devices; a run killed with SIGKILL) start with the module, so
that their imports and compilations overlap the in-process tests.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import cli
from jaxsr.data import Generator, GeneratorConfig, batches
from jaxsr.model import E2EModel, get_config, init_params
from jaxsr.train import (
    Checkpoints,
    NonFiniteLossError,
    TrainConfig,
    export_weights,
    inverse_sqrt_schedule,
    load_config,
    read_csv,
    train,
)
from jaxsr.train.step import StepBatch, TrainState, init_state, make_optimizer, token_losses
from jaxsr.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
# One batch shape: 8 rows (160 points / 20 per sample) of up to 20 points, targets padded to
# 40 tokens (the longest possible with one variable, one unary and at most 2 binary operators),
# in micro-batches of 4 rows (the 8-device run, 1 row per device, takes the one-pass path).
TEST_SETUP = {
    "base": "tiny",
    "generator": {"max_input_dimension": 1, "max_unary_ops": 1, "max_binary_ops_offset": 2,
                  "max_points": 20},
    "point_buckets": [20], "token_buckets": [40], "tokens_per_device": 160, "micro_batch": 4,
    "lr": 1e-3, "warmup_steps": 10, "workers": 0, "log_every": 10,
    "checkpoint_every": 4, "keep_checkpoints": 10, "validate_every": 0,
}
REFERENCE_STEPS = 20
COMPARED = ("loss", "lr", "grad_norm", "samples", "points", "tokens")


def setup_overrides(**changes) -> list[str]:
    values = {k: v for k, v in TEST_SETUP.items() if k != "base"} | changes
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def setup_config(workdir, **changes) -> TrainConfig:
    return load_config("tiny", setup_overrides(workdir=str(workdir), **changes))


def cli_command(setup_file, workdir, *options) -> list[str]:
    return [sys.executable, "-m", "jaxsr.cli", "train", "--config", str(setup_file),
            "--workdir", str(workdir), *options]


def _last_step(csv_path: Path) -> int:
    lines = csv_path.read_text().splitlines() if csv_path.exists() else []
    return int(lines[-1].split(",")[0]) if len(lines) > 1 and lines[-1][:1].isdigit() else 0


def _latest_checkpoint(workdir: Path) -> int:
    """The newest finished checkpoint (orbax renames a step's directory when complete)."""
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def _pause_when(condition, process, what: str, timeout: float = 240.0) -> None:
    """Freezes ``process`` (SIGSTOP) at a moment when ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            process.send_signal(signal.SIGSTOP)
            if condition():
                return
            process.send_signal(signal.SIGCONT)
        if process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) before {what}:\n"
                                 + process.stdout.read()[-3000:])
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class KilledRun(threading.Thread):
    """In the background, from the module's start: a run SIGKILLed at a moment when its
    last step is past its last checkpoint (so that step is lost). Records what it saw."""

    def __init__(self, setup_file, workdir: Path, env: dict):
        super().__init__(daemon=True)
        self.workdir = workdir
        self.process = subprocess.Popen(
            cli_command(setup_file, workdir, "--steps", str(REFERENCE_STEPS),
                        "--set", "log_every=1", "--set", "checkpoint_every=2"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.facts: dict = {}
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            csv_path = self.workdir / "train.csv"
            _pause_when(lambda: 2 <= _latest_checkpoint(self.workdir) < _last_step(csv_path),
                        self.process, "a checkpoint, and a step after it")
            self.facts["killed_at"] = _latest_checkpoint(self.workdir)
            self.facts["csv_step"] = _last_step(csv_path)
            self.process.kill()  # SIGKILL: no handler runs; the steps after killed_at are lost
            self.process.communicate()
        except Exception as err:  # noqa: BLE001 (the test joining this thread raises it)
            self.error = err

    def result(self) -> dict:
        self.join(timeout=600)
        if self.error is not None:
            raise self.error
        return self.facts


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory):
    """Starts the subprocess runs at the module's start (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("background")
    setup_file = tmp / "setup.json"
    setup_file.write_text(json.dumps(TEST_SETUP))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # 4 steps on 8 simulated CPU devices with 1 row each: the reference's global batch.
    eight = subprocess.Popen(
        cli_command(setup_file, tmp / "eight", "--steps", "4", "--set", "tokens_per_device=20",
                    "--set", "log_every=1"),
        env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = KilledRun(setup_file, tmp / "killed", env)
    killed.start()
    yield {"setup_file": setup_file, "eight": (eight, tmp / "eight"), "killed": killed}
    for process in (eight, killed.process):
        if process.poll() is None:
            process.kill()
    killed.join(timeout=60)


@pytest.fixture(scope="module")
def setup_file(background):
    return background["setup_file"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of REFERENCE_STEPS steps (checkpoints every 4 steps kept)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train(setup_config(workdir, steps=REFERENCE_STEPS, log_every=1))
    assert result.step == REFERENCE_STEPS and result.stopped == "finished"
    return workdir, read_csv(workdir / "train.csv")


# ----------------------------------------------------------------------------- pieces


def test_schedule_is_the_reference_warmup_then_inverse_sqrt():
    schedule = inverse_sqrt_schedule(2e-4, 10_000, 1e-7)
    assert schedule(0) == pytest.approx(1e-7)
    assert schedule(5_000) == pytest.approx(1e-7 + 5_000 * (2e-4 - 1e-7) / 10_000)
    assert schedule(10_000) == pytest.approx(2e-4)
    assert schedule(40_000) == pytest.approx(1e-4)  # 2e-4 * sqrt(10000 / 40000)
    counts = np.arange(0, 30_000, 100)
    rates = schedule(counts)
    assert np.all(np.diff(rates[counts < 10_000]) > 0) and np.all(np.diff(rates[100:]) < 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        inverse_sqrt_schedule(1e-3, 0)


def test_loss_is_the_mean_over_target_tokens_and_ignores_padding():
    config = get_config("tiny")
    model, params = E2EModel(config), init_params(config, seed=0)
    stream = batches(Generator(GeneratorConfig(seed=3, max_input_dimension=1, max_points=20)),
                     tokens_per_batch=80, point_buckets=(20,), workers=0)
    batch = StepBatch.from_data(next(stream))

    @jax.jit
    def loss_and_logits(params, batch):
        point_mask = jnp.arange(20)[None] < batch.n_points[:, None]
        logits = model.apply({"params": params}, batch.points, point_mask, batch.tokens[:, :-1])
        return token_losses(model, params, batch), logits

    (total, count), logits = loss_and_logits(params, batch)
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    expected, expected_count = 0.0, 0
    for row, n in enumerate(batch.n_tokens):  # targets: tokens 1 .. n-1 (the closing <EOS>)
        for t in range(n - 1):
            expected -= float(logp[row, t, batch.tokens[row, t + 1]])
            expected_count += 1
    assert count == expected_count
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)

    rng = np.random.default_rng(0)  # junk in every padded slot changes nothing
    junk_points = np.where(np.arange(20)[None, :, None] < batch.n_points[:, None, None],
                           batch.points, rng.integers(0, 10218, batch.points.shape))
    junk_tokens = np.where(np.arange(batch.tokens.shape[1]) < batch.n_tokens[:, None],
                           batch.tokens, rng.integers(0, 10292, batch.tokens.shape))
    junk = batch._replace(points=junk_points.astype(np.int32),
                          tokens=junk_tokens.astype(np.int32))
    np.testing.assert_allclose(float(loss_and_logits(params, junk)[0][0]), float(total),
                               rtol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("model=huge", "unknown model config 'huge'"),
    ("lr=-1", "TrainConfig.lr: must be a finite number > 0"),
    ("lr=NaN", "TrainConfig.lr"),
    ("tokens_per_device=0", "TrainConfig.tokens_per_device: must be an int >= 1"),
    ("dtype=float64", "TrainConfig.dtype: must be one of"),
    ("model.dtype=bfloat16", "set the compute dtype with TrainConfig.dtype"),
    ("model.decoder_layers=0", "TrainConfig.model_overrides: .*decoder_layers"),
    ("generator.max_points=0", "TrainConfig.generator: .*max_points"),
    ("generator.max_len=0", "TrainConfig.generator: .*max_points"),  # the earlier name
    ("point_buckets=[]", "TrainConfig.point_buckets"),
    ("steps=1.5", "TrainConfig.steps: must be an int >= 0"),
    ("learning_rate=1e-3", "unknown TrainConfig fields: \\['learning_rate'\\]"),
    ("nested.x=1", "only model.FIELD and generator.FIELD nest"),
    ("lr", "is not FIELD=VALUE"),
])
def test_bad_config_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", [override])


def test_configs_load_from_recipes_json_files_and_overrides(tmp_path, setup_file):
    config = load_config(setup_file, ["model.decoder_layers=3", "generator.seed=7", "lr=4e-4"])
    assert config.model == "tiny" and config.lr == 4e-4 and config.tokens_per_device == 160
    assert config.model_config().decoder_layers == 3
    generator = config.generator_config()
    assert (generator.seed, generator.max_points, generator.max_input_dimension) == (7, 20, 1)
    assert load_config(setup_file).generator_config().seed == 0  # the run's seed by default
    assert TrainConfig.from_dict(config.to_dict()) == config
    saved_earlier = {**config.to_dict(), "generator": {  # a config.json written before the
        **config.generator, "max_len": config.generator["max_points"]}}  # rename
    del saved_earlier["generator"]["max_points"]
    assert TrainConfig.from_dict(saved_earlier) == config
    bf16 = load_config("tiny", ["dtype=bfloat16"])
    assert bf16.model_config().compute_dtype == jnp.bfloat16  # compute only: params float32
    for path in sorted((ROOT / "configs").glob("*.json")):
        assert isinstance(load_config(path), TrainConfig), path
    with pytest.raises(ValueError, match="neither a recipe"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"base": "medium"}')
    with pytest.raises(ValueError, match="unknown base recipe 'medium'"):
        load_config(tmp_path / "bad.json")


def test_checkpoint_round_trip_is_exact(tmp_path):
    # A small stand-in for a train state: nested params and optax's state (namedtuples,
    # empty states, an int count), with random values so that a mixed-up leaf would show.
    rng = np.random.default_rng(0)
    params = {"embedder": {"w": rng.standard_normal((3, 4)).astype(np.float32)},
              "decoder": {"b": rng.standard_normal(5).astype(np.float32)}}
    optimizer = make_optimizer(0.5)
    fresh = jax.device_get(TrainState(step=jnp.int32(0), params=params,
                                      opt_state=optimizer.init(params)).to_dict())
    saved = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype)
                         if x.dtype == np.float32 else np.asarray(x + 7), fresh)
    meta = {"step": 7, "stream_state": {"position": 123}, "config": {"lr": 1e-3}}
    with Checkpoints(tmp_path, keep=2) as checkpoints:
        checkpoints.save(7, saved, meta)
        checkpoints.wait()
        restored, restored_meta = checkpoints.restore(fresh)
        params_only = checkpoints.restore_params(fresh["params"])
    assert restored_meta == meta
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(params_only), jax.tree.leaves(saved["params"])):
        np.testing.assert_array_equal(a, b)
    assert int(restored["step"]) == 7 and int(restored["opt_state"][1].count) == 7


# ----------------------------------------------------------------------------- runs


def test_tiny_loss_falls_in_a_short_run(reference):
    _, rows = reference
    losses = np.array([row["loss"] for row in rows])
    assert [row["step"] for row in rows] == list(range(1, REFERENCE_STEPS + 1))
    assert losses[-5:].mean() < losses[:5].mean() - 2.0, losses  # ~9.6 -> ~7
    assert all(row["samples"] == 8 for row in rows)
    assert np.all(np.isfinite(losses))


def test_exported_weights_load_as_a_model(reference, tmp_path):
    workdir, _ = reference
    out = export_weights(workdir, tmp_path / "weights")
    weights = load_weights(out)
    assert weights.metadata["source"]["step"] == REFERENCE_STEPS
    with Checkpoints(workdir) as checkpoints:
        params = checkpoints.restore_params(weights.params)
    for a, b in zip(jax.tree.leaves(weights.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert weights.config == get_config("tiny")
    assert weights.decoding["max_input_points"] == 20  # the regressor's bag size follows it
    chosen = load_weights(export_weights(workdir, tmp_path / "w2",
                                         decoding={"max_input_points": 8}))
    assert chosen.decoding["max_input_points"] == 8
    assert chosen.decoding["beam_temperature"] == weights.decoding["beam_temperature"]


def read_events(path: Path) -> list:
    """The Event protos of a TFRecord file: (length, masked CRC32C of the length, payload,
    masked CRC32C of the payload) records, each CRC checked."""
    from tensorboardX.record_writer import masked_crc32c
    from tensorboardX.proto.event_pb2 import Event

    data, events = path.read_bytes(), []
    while data:
        length, length_crc = struct.unpack("<QI", data[:12])
        payload, (payload_crc,) = data[12:12 + length], struct.unpack(
            "<I", data[12 + length:16 + length])
        assert (length_crc, payload_crc) == (masked_crc32c(data[:8]), masked_crc32c(payload))
        events.append(Event.FromString(payload))
        data = data[16 + length:]
    return events


def test_tensorboard_events_hold_every_logged_step_and_the_purge_marker(reference):
    from tensorboardX.proto.event_pb2 import SessionLog

    workdir, rows = reference
    (path,) = (workdir / "tensorboard").iterdir()
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    starts = [e.step for e in events if e.session_log.status == SessionLog.START]
    assert starts == [1]  # TensorBoard hides earlier files' events from step 1 on
    scalars = {}
    for e in events:
        for v in e.summary.value:
            scalars.setdefault(v.tag, {})[e.step] = v.simple_value
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(scalars)
    assert sorted(scalars["train/loss"]) == [row["step"] for row in rows]
    for row in rows:
        assert scalars["train/loss"][row["step"]] == pytest.approx(row["loss"], rel=1e-6)
        assert scalars["train/lr"][row["step"]] == pytest.approx(row["lr"], rel=1e-6)


def test_resuming_with_a_changed_trajectory_field_is_refused(reference):
    workdir, _ = reference
    with pytest.raises(ValueError, match="whose lr differ"):
        train(setup_config(workdir, steps=REFERENCE_STEPS + 5, lr=5e-4))


def test_a_finished_run_does_nothing_when_called_again(reference):
    workdir, rows = reference
    result = train(setup_config(workdir, steps=REFERENCE_STEPS))
    assert result.step == REFERENCE_STEPS and result.last_metrics is None
    assert read_csv(workdir / "train.csv") == rows


def _send_sigterm_at(csv_path: Path, step: int) -> threading.Thread:
    """A thread that sends SIGTERM to this process once ``csv_path`` reaches ``step``."""

    def wait_and_signal():
        deadline = time.monotonic() + 240
        while _last_step(csv_path) < step and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


def test_resuming_after_sigkill_and_after_sigterm_is_exact(reference, background):
    """A run SIGKILLed past its last checkpoint (a subprocess) resumes, redoing the lost
    steps; SIGTERM then stops the resumed run at the next step boundary with a checkpoint
    of that step; resuming again finishes. Every step's loss equals the uninterrupted run's."""
    killed = background["killed"]
    facts = killed.result()
    killed_at = facts["killed_at"]
    assert 2 <= killed_at < facts["csv_step"]
    workdir, csv_path = killed.workdir, killed.workdir / "train.csv"

    def config(steps):
        return load_config(background["setup_file"],
                           [f"workdir={workdir}", f"steps={steps}", "log_every=1"])

    # Past every row the killed run wrote, so only the resumed run's rows count; a signal
    # arriving while the trainer's handler is not installed would land in `missed`.
    signal_step = facts["csv_step"] + 2
    missed = []
    previous = signal.signal(signal.SIGTERM, lambda *_: missed.append(True))
    try:
        sender = _send_sigterm_at(csv_path, signal_step)
        stopped = train(config(REFERENCE_STEPS))
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not missed
    assert stopped.stopped == "signal" and signal_step <= stopped.step < REFERENCE_STEPS
    with Checkpoints(workdir) as checkpoints:
        assert checkpoints.latest_step() == stopped.step == _last_step(csv_path)

    end = min(stopped.step + 3, REFERENCE_STEPS)
    assert train(config(end)).step == end
    rows = read_csv(csv_path)
    assert [row["step"] for row in rows] == list(range(1, end + 1))
    for ours, theirs in zip(rows, reference[1]):
        assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}, ours["step"]


def test_eight_devices_match_one_device_with_the_same_global_batch(reference, background):
    process, workdir = background["eight"]
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert "1 host(s) x 8 device(s)" in output
    rows = read_csv(workdir / "train.csv")
    reference_dir, reference_rows = reference
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for ours, theirs in zip(rows, reference_rows):
        assert ours["samples"] == theirs["samples"] == 8
        assert ours["tokens"] == theirs["tokens"]
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
    with Checkpoints(workdir) as eight, Checkpoints(reference_dir) as one:
        target = jax.device_get(init_state(get_config("tiny"), make_optimizer(0.5), 0).to_dict())
        state_8, meta_8 = eight.restore(target, step=4)
        state_1, _ = one.restore(target, step=4)
    assert meta_8["devices"] == 8
    leaves_8, leaves_1 = jax.tree.leaves(state_8["params"]), jax.tree.leaves(state_1["params"])
    assert max(float(np.abs(a - b).max()) for a, b in zip(leaves_8, leaves_1)) < 1e-5
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(leaves_1, jax.tree.leaves(target["params"])))
    assert moved > 1e-4  # four updates did change the parameters


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 1e30 from the second update: its parameters give a non-finite loss at step 3.
    config = setup_config(tmp_path, lr=1e30, warmup_steps=1, checkpoint_every=1, steps=10)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at step 3.*"
                                                 "last checkpoint \\(step 2\\) is intact"):
        train(config)
    with Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.all_steps() == [1, 2]
    assert [row["step"] for row in read_csv(tmp_path / "train.csv")] == [1, 2]


def test_cli_trains_validates_resumes_and_exports(tmp_path, capsys):
    args = ["train", "--config", "tiny", "--workdir", str(tmp_path), "--steps", "2",
            *[a for o in setup_overrides(validate_every=2, validation_size=3,
                                         validation_max_len=6, checkpoint_every=2)
              for a in ("--set", o)]]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "step 2/2 | loss" in out and "samples/s" in out and "points/s" in out
    assert "validation at step 2: acc_0.1" in out
    validation = read_csv(tmp_path / "validation.csv")
    assert [row["step"] for row in validation] == [2]
    assert {"acc_0.1", "r2", "valid"} <= set(validation[0])
    assert any((tmp_path / "tensorboard").iterdir())
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["validate_every"] == 2 and saved["tokens_per_device"] == 160

    # No --config: the workdir's checkpoint gives it; --export writes released weights.
    assert cli.main(["train", "--workdir", str(tmp_path), "--steps", "3",
                     "--export", str(tmp_path / "weights")]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert load_weights(tmp_path / "weights").metadata["source"]["step"] == 3

    assert cli.main(["train", "--workdir", str(tmp_path / "empty")]) == 2  # errors.USAGE
    assert "no checkpoint to take the config from" in capsys.readouterr().err
    assert cli.main(["train", "--config", "tiny", "--workdir", str(tmp_path),
                     "--set", "lr=-1"]) == 2
    assert "TrainConfig.lr" in capsys.readouterr().err


def test_distributed_initialisation_reads_the_cluster_from_the_environment(monkeypatch):
    from jaxsr.train import loop

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    loop._initialize_distributed(TrainConfig(model="tiny"))  # not asked: nothing happens
    assert calls == []
    loop._initialize_distributed(TrainConfig(model="tiny", distributed=True))
    monkeypatch.setenv("JAXSR_DISTRIBUTED", "1")
    loop._initialize_distributed(TrainConfig(model="tiny"))
    assert calls == [{"num_processes": 4, "process_id": 3}] * 2


@pytest.mark.skipif(os.environ.get("JAXSR_MULTIHOST_TEST") != "1",
                    reason="two processes with gloo collectives (~30 s of CPU); "
                           "set JAXSR_MULTIHOST_TEST=1")
def test_two_hosts_match_one_host(reference, tmp_path, setup_file):
    """2 processes x 2 CPU devices (jax.distributed on localhost, gloo): each host generates
    its shard; the losses equal the one-device run's with the same global batch."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS="127.0.0.1:12357",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    command = cli_command(setup_file, tmp_path, "--steps", "4", "--distributed",
                          "--set", "tokens_per_device=40", "--set", "log_every=1")
    hosts = [subprocess.Popen(command, env=dict(env, JAX_PROCESS_ID=str(i)), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = [host.communicate(timeout=600)[0] for host in hosts]
    assert all(host.returncode == 0 for host in hosts), outputs[0][-3000:]
    assert "2 host(s) x 2 device(s)" in outputs[0]
    rows = read_csv(tmp_path / "train.csv")
    for ours, theirs in zip(rows, reference[1], strict=False):
        assert ours["samples"] == theirs["samples"]
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]


def test_the_lazy_train_package_resolves_every_exported_name_and_only_those():
    import jaxsr.train as package

    for name in package.__all__:  # each resolves through the lazy table, none is missing
        value = getattr(package, name)
        assert isinstance(value, dict) if name == "RECIPES" else value.__name__ == name
    with pytest.raises(AttributeError, match="has no attribute 'trian'"):
        package.trian
    # The module docstring's example, up to the call that would train.
    config = package.load_config("tiny", ["workdir=runs/tiny", "steps=200"])
    assert (config.workdir, config.steps, config.model) == ("runs/tiny", 200, "tiny")

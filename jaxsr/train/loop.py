"""The training loop: ``train(config)``, from one CPU to a multi-host pod slice.

One call runs (or resumes) the run that ``config`` describes in ``config.workdir``:

1. set-up: ``jax.distributed.initialize()`` when asked, the model, the optimiser and the
   pmapped train step;
2. resume: the latest checkpoint in the workdir, if any, gives the train state and the data
   stream's position; its trajectory fields must equal ``config``'s;
3. the loop: a batch from this host's shard of the generator's stream, split over the local
   devices; one pmapped update; the step's metrics are read one step late, so that the
   host never waits for the device it has just fed; checkpoints every
   ``checkpoint_every`` steps, at the end, and at the first step boundary after SIGTERM
   or SIGINT (then ``train`` returns), and at the step boundary where ``max_time`` runs out
   (likewise); a validation every ``validate_every`` steps.

A non-finite loss or gradient norm raises ``NonFiniteLossError`` naming the step before
any checkpoint of that step or later is written: the last checkpoint stays the last good one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Self

import jax
import numpy as np

import jaxsr
from jaxsr import parallel
from jaxsr.data import Generator, StreamState, batches
from jaxsr.fileio import atomic_write
from jaxsr.model import E2EModel, count_params
from jaxsr.train.checkpoint import Checkpoints
from jaxsr.train.config import TrainConfig
from jaxsr.train.logging import RunLogger
from jaxsr.train.schedule import inverse_sqrt_schedule
from jaxsr.train.step import (
    StepBatch,
    TrainState,
    init_state,
    make_optimizer,
    make_train_step,
    pmap_step,
)
from jaxsr.train.validation import make_validation_set, validate

CONFIG_FILE = "config.json"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm of a step was NaN or infinite; training stopped."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How ``train`` ended: ``step`` updates done, ``stopped`` "finished" (reached
    ``config.steps``), "signal" (SIGTERM/SIGINT) or "time" (``max_time`` ran out); after a
    signal or the time limit the state is saved, and calling ``train`` again resumes it."""

    workdir: Path
    step: int
    stopped: str
    last_metrics: dict | None


def train(config: TrainConfig, *, max_time: float | None = None) -> TrainResult:
    """Trains (or resumes training) as ``config`` says; see the module docstring.

    ``max_time``: seconds of wall time for this call, set-up and compilation included. The
    loop does not start a step that would end past it (judged by the last steps'
    durations); it then saves a checkpoint and returns, like after SIGTERM. A limit is not
    part of the run: calling again (with a new limit or none) continues it exactly.
    """
    deadline = None if max_time is None else time.monotonic() + max_time
    # ------------------------------------------------------------------ set-up
    _initialize_distributed(config)
    workdir = Path(config.workdir)
    primary = jax.process_index() == 0
    model = E2EModel(config.model_config())
    optimizer = make_optimizer(config.clip_norm)
    schedule = inverse_sqrt_schedule(config.lr, config.warmup_steps, config.warmup_init_lr)
    with contextlib.ExitStack() as cleanup:
        # ---------------------------------------------------------------- resume
        checkpoints = cleanup.enter_context(Checkpoints(workdir, config.keep_checkpoints))
        cleanup.callback(checkpoints.wait)  # runs first: saves in flight reach the disk
        state = init_state(model.config, optimizer, config.seed)
        state, stream_state = _resume(checkpoints, config, state)
        start = int(state.step)
        if start >= config.steps:  # nothing to do, and no log file touched
            if primary:
                print(f"{workdir}: already at step {start} of {config.steps}", flush=True)
            return TrainResult(workdir, start, "finished", None)
        logger = cleanup.enter_context(
            contextlib.closing(RunLogger(workdir, start, config.steps, enabled=primary)))
        if primary:
            atomic_write(workdir / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
        stream = cleanup.enter_context(_stream(config, stream_state))
        logger.message(_banner(config, state, stream, resumed=stream_state is not None))

        # ---------------------------------------------------------------- loop
        train_step = _pmapped_step(model.config, config.clip_norm, config.micro_batch)
        run = _Run(config, model, train_step, schedule, checkpoints, logger, stream, deadline)
        stop = cleanup.enter_context(_StopRequest())
        return run.loop(parallel.replicate(state), start, stop)


class _Run:
    """The loop's state and its per-step bookkeeping."""

    def __init__(self, config, model, train_step, schedule, checkpoints, logger, stream,
                 deadline: float | None = None):
        self.config, self.model, self.train_step = config, model, train_step
        self.schedule = schedule
        self.checkpoints, self.logger, self.stream = checkpoints, logger, stream
        self.deadline = deadline  # time.monotonic() at which to stop, if any
        self._step_seconds = collections.deque(maxlen=2)  # the last two steps' durations
        self._compile_seconds = 0.0  # the last step with a new batch shape (it compiled)
        self._shapes: set[tuple] = set()  # batch shapes trained on (compiled) in this call
        self._step_started = None
        self._upcoming = None  # the next batch, drawn early to see whether it will compile
        self._validation_set = None
        self._unchecked = None  # (step, lr, metrics on device) not yet read back
        self.last_metrics = None

    def loop(self, state: TrainState, step: int, stop: _StopRequest) -> TrainResult:
        config = self.config
        self._step_started = time.monotonic()
        while step < config.steps:
            batch, self._upcoming = self._upcoming or next(self.stream), None
            lr = self.schedule(step)  # of update number `step`, counted from 0
            state, metrics = self.train_step(state, parallel.shard(StepBatch.from_data(batch)),
                                             np.float32(lr))
            step += 1
            self._check_and_log()  # the previous step's, while this one runs
            self._unchecked = (step, lr, metrics)
            timed_out = self._out_of_time(batch, step)
            stopping = _agree(stop.requested or timed_out)
            last = stopping or step == config.steps
            save = last or step % config.checkpoint_every == 0
            log = last or step % config.log_every == 0
            if save or log:
                self._check_and_log()  # a checkpoint follows only steps known to be finite
            if save:
                self._save(step, state, batch.state)
            if log:
                self.logger.interval(step)
            if stopping:  # no validation: the grace period after SIGTERM may be short
                return self._stopped(step, stop)
            if config.validate_every and step % config.validate_every == 0:
                self._validate(step, state)
                self._step_started = time.monotonic()  # a validation is not a step's time
        self._check_and_log()
        return TrainResult(Path(config.workdir), step, "finished", self.last_metrics)

    def _out_of_time(self, batch, step: int) -> bool:
        """Whether the step boundary nearest the deadline is this one: the next step would
        end further past it than it is away now. The next step is expected to last as long
        as the shorter of the last two, plus a compilation if its batch shape is new.
        Drawing that batch early is harmless: a checkpoint records the stream's position
        after the last batch trained on, so a resumed run draws it again."""
        now = time.monotonic()
        seconds, self._step_started = now - self._step_started, now
        shape = _batch_shape(batch)
        if shape in self._shapes:
            self._step_seconds.append(seconds)
        else:  # this step compiled (the first one of a call always does)
            self._shapes.add(shape)
            self._compile_seconds = seconds
        if self.deadline is None or step >= self.config.steps:
            return False
        expected = min(self._step_seconds, default=0.0)
        self._upcoming = next(self.stream)
        if _batch_shape(self._upcoming) not in self._shapes:
            expected += self._compile_seconds
        return now + expected / 2 >= self.deadline

    def _stopped(self, step: int, stop: _StopRequest) -> TrainResult:
        if stop.requested:
            reason, why = "signal", f"stopped by {stop.signal_name}"
        else:  # this host's clock, or another host's (they all stop at the same step)
            reason, why = "time", "stopped at the time limit"
        self.logger.message(f"{why} at step {step}; checkpoint saved; run the same command "
                            "again to resume")
        return TrainResult(Path(self.config.workdir), step, reason, self.last_metrics)

    def _check_and_log(self) -> None:
        """Reads back the unchecked step's metrics; raises if they are not finite."""
        if self._unchecked is None:
            return
        step, lr, metrics = self._unchecked
        self._unchecked = None
        values = {"lr": lr, **{k: float(v) for k, v in parallel.to_host(metrics).items()}}
        values["seconds"] = round(self.logger.elapsed(), 3)
        if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
            self.checkpoints.wait()
            last = self.checkpoints.latest_step()
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (loss {values['loss']}, gradient "
                f"norm {values['grad_norm']}, lr {values['lr']:.3g}); training stopped "
                f"without saving this state. The last checkpoint "
                f"({'step ' + str(last) if last is not None else 'none'}) is intact; try a "
                "lower lr or a longer warm-up.")
        self.logger.step(step, values)
        self.last_metrics = {"step": step, **values}

    def _save(self, step: int, state: TrainState, stream_state: StreamState) -> None:
        meta = {
            "step": step,
            "stream_state": stream_state.to_dict(),
            "config": self.config.to_dict(),
            "devices": parallel.device_count(),
            "processes": jax.process_count(),
            "jaxsr_version": jaxsr.__version__,
        }
        self.checkpoints.save(step, parallel.to_host(state).to_dict(), meta)

    def _validate(self, step: int, state: TrainState) -> None:
        if jax.process_index() != 0:  # the other hosts wait at the next step's collectives
            return
        config = self.config
        if self._validation_set is None:
            self._validation_set = make_validation_set(
                config.generator_config(), config.validation_size, config.validation_seed)
        results = validate(self.model, parallel.first_replica(state.params),
                           self._validation_set, max_len=config.validation_max_len,
                           batch=config.validation_batch)
        self.logger.validation(step, results)
        self.logger.restart_clock()


# ---------------------------------------------------------------------------- helpers


def _batch_shape(batch) -> tuple:
    """What decides whether a batch reuses a compiled step: its padded array shapes."""
    return batch.points.shape, batch.tokens.shape


@functools.lru_cache(maxsize=8)
def _pmapped_step(model_config, clip_norm: float, micro_batch: int | None):
    """One pmapped step per (model, clip, micro-batch): repeated ``train`` calls in a
    process (tests, notebooks) reuse its compiled code."""
    step = make_train_step(E2EModel(model_config), make_optimizer(clip_norm), micro_batch)
    return pmap_step(step)


def _initialize_distributed(config: TrainConfig) -> None:
    """Multi-host: ``jax.distributed.initialize()`` finds the other hosts by itself on TPU
    pods, SLURM and Open MPI; elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process
    0), JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host."""
    wanted = config.distributed or os.environ.get("JAXSR_DISTRIBUTED", "") == "1"
    if wanted and not jax.distributed.is_initialized():
        jax.distributed.initialize(**_cluster_from_environment())


def _cluster_from_environment() -> dict:
    # jax reads JAX_COORDINATOR_ADDRESS itself, but not these two.
    names = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}
    return {key: int(os.environ[env]) for env, key in names.items() if os.environ.get(env)}


def _resume(checkpoints: Checkpoints, config: TrainConfig,
            fresh: TrainState) -> tuple[TrainState, StreamState | None]:
    """The latest checkpoint's state and stream position, or ``fresh`` and None."""
    if checkpoints.latest_step() is None:
        return fresh, None
    target = jax.device_get(fresh.to_dict())
    saved, meta = checkpoints.restore(target)
    differences = config.trajectory_differences(TrainConfig.from_dict(meta["config"]))
    if differences:
        raise ValueError(
            f"{checkpoints.directory} holds a run whose {', '.join(differences)} differ from "
            "this config's; resuming would not continue that run. Use the saved values "
            f"(see {Path(config.workdir) / CONFIG_FILE}) or a new workdir.")
    devices, processes = parallel.device_count(), jax.process_count()
    if (meta["devices"], meta["processes"]) != (devices, processes):
        raise ValueError(
            f"the checkpoint at step {meta['step']} was written by {meta['processes']} "
            f"host(s) x {meta['devices']} device(s); this run has {processes} x {devices}. "
            "Its data stream (each device's share of every batch) cannot continue exactly "
            "on another layout: resume on the same layout, or start a new workdir.")
    return TrainState.from_dict(saved), StreamState.from_dict(meta["stream_state"])


def _stream(config: TrainConfig, state: StreamState | None):
    devices = parallel.device_count()
    return batches(Generator(config.generator_config()),
                   tokens_per_batch=config.tokens_per_device * devices,
                   point_buckets=config.point_buckets, token_buckets=config.token_buckets,
                   batch_multiple=devices, state=state, workers=config.workers,
                   process_index=jax.process_index(), process_count=jax.process_count())


def _banner(config: TrainConfig, state: TrainState, stream, resumed: bool) -> str:
    where = f"resuming at step {int(state.step)}" if resumed else "from scratch"
    return (f"training {config.model} ({count_params(state.params):,} parameters, "
            f"{config.dtype}) in {config.workdir}, {where} to step {config.steps}: "
            f"{jax.process_count()} host(s) x {parallel.device_count()} device(s), "
            f"{config.tokens_per_device:,} points per device per step, "
            f"{len(stream.shapes)} batch shapes")


def _agree(flag: bool) -> bool:
    """True on every host if it is True on any: all hosts must stop at the same step,
    because a checkpoint save is collective."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


class _StopRequest:
    """SIGTERM/SIGINT set ``requested``; the loop saves at the next step boundary and
    returns. After the first signal the previous handlers are back, so a second Ctrl-C
    interrupts at once. Only the main thread can install handlers; elsewhere this is inert."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()

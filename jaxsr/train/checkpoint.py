"""Training checkpoints with orbax, behind three calls: ``save``, ``restore``, ``latest_step``.

Layout: ``WORKDIR/checkpoints/<step>/`` with two orbax items,

- ``state``: the train state as arrays (``step``, ``params``, ``opt_state``);
- ``meta``: JSON with the step, the data stream's position (``StreamState.to_dict()``), the
  ``TrainConfig``, the device and host counts, and the jaxsr version.

Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints readable, and ``latest_step`` only sees
finished ones. Arrays are saved from host (numpy) copies of device 0's replica, which every
host holds identically; orbax lets the primary host write them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class Checkpoints:
    """The checkpoints of one workdir; keeps the newest ``keep``."""

    def __init__(self, workdir: str | Path, keep: int = 3, *, create: bool = True):
        """``create=False`` (reading only) raises FileNotFoundError for a workdir
        without checkpoints instead of creating its directory."""
        self.directory = Path(workdir).resolve() / CHECKPOINT_DIR
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(f"{Path(workdir)} has no checkpoints ({self.directory} "
                                    "does not exist)")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Starts writing ``state`` (numpy arrays) and ``meta`` (JSON-able) as ``step``."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, target: dict, step: int | None = None) -> tuple[dict, dict]:
        """(state, meta) of ``step`` (default: the latest); ``target`` gives the tree
        structure, shapes and dtypes the state is read into."""
        step = self._step_or_latest(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def restore_params(self, target: dict, step: int | None = None) -> dict:
        """The ``params`` subtree alone (the optimizer state is not read)."""
        step = self._step_or_latest(step)
        item = ocp.args.PyTreeRestore(item={"params": target}, partial_restore=True)
        return self._manager.restore(step, args=ocp.args.Composite(state=item)).state["params"]

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON part alone: no array is read."""
        step = self._step_or_latest(step)
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            have = self.all_steps() or "none"
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                    f"(steps: {have})")
        return step

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

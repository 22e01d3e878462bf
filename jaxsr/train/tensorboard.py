"""TensorBoard scalars through tensorboardX's ``SummaryWriter`` (no TensorFlow).

tensorboardX is imported when a writer is made, not with this module: where torch is
installed, tensorboardX imports it (about 3 s on one core), a cost only runs that write
TensorBoard events should pay.
"""

from __future__ import annotations

from pathlib import Path


class EventWriter:
    """Appends scalars to a new event file in ``logdir``.

    ``purge_step``: TensorBoard drops the events of steps >= purge_step written to this
    ``logdir`` before (a resumed run passes the first step it redoes).
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

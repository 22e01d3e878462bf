"""``jaxsr train``: arguments and the handler (``jaxsr/cli.py`` registers them)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="NAME_OR_JSON", default=None,
        help="a recipe (tiny, small, paper) or a JSON file of TrainConfig fields; default: "
             "the config saved in --workdir's latest checkpoint")
    parser.add_argument("--workdir", required=True,
                        help="checkpoints and logs; training resumes from the latest checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="override a TrainConfig field (repeatable), e.g. --set lr=4e-4 "
                             "--set dtype=bfloat16 --set model.decoder_layers=8 "
                             "--set generator.max_points=100")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first")
    parser.add_argument("--max-time", type=_seconds, default=None, metavar="SECONDS",
                        help="stop after this much wall time (set-up included) at a step "
                             "boundary, with a checkpoint; the same command resumes")
    parser.add_argument("--export", metavar="OUT_DIR", nargs="?", default=None, const="",
                        help="then write the latest checkpoint's parameters as released "
                             "weights to OUT_DIR (default WORKDIR/weights) if its validation "
                             "accuracy beats the weights already there (with --steps 0 or a "
                             "finished run: export only)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Trains (and exports); errors propagate to ``jaxsr.cli``, which turns each kind into
    one line and its exit status."""
    # --max-time counts from the command's start (jaxsr.cli.main), importing JAX included.
    started = getattr(args, "started", None) or time.monotonic()
    from jaxsr.train.config import apply_overrides, load_config
    from jaxsr.train.export import EXPORT_DIR, export_if_improved
    from jaxsr.train.loop import train

    overrides = [f"workdir={args.workdir}", *args.overrides]
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.distributed:
        overrides.append("distributed=true")
    if args.config is not None:
        config = load_config(args.config, overrides)
    else:
        config = apply_overrides(_saved_config(args.workdir), overrides)
    max_time = None if args.max_time is None else args.max_time - (time.monotonic() - started)
    train(config, max_time=max_time)
    if args.export is not None:
        out = args.export or str(Path(config.workdir) / EXPORT_DIR)
        print(export_if_improved(config, out).describe(), flush=True)
    return 0


def _saved_config(workdir: str):
    from jaxsr.train.export import read_checkpoint_config

    try:
        return read_checkpoint_config(workdir)
    except FileNotFoundError:
        raise ValueError(f"{workdir} has no checkpoint to take the config from; "
                         "pass --config tiny|small|paper|FILE.json") from None

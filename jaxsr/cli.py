"""The ``jaxsr`` command line: ``jaxsr info``, ``demo``, ``convert``, ``train``, ``fit``.

Every error ends the command with one line on stderr and an exit status of
``jaxsr.errors`` (2 usage, 3 bad data, 4 bad model or weights, 5 training stopped, 6 output
not writable, 1 a bug); ``--debug`` prints the traceback too. See docs/errors.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

import numpy as np

from jaxsr import errors
from jaxsr.errors import CommandError

from jaxsr.regressor.command import add_arguments as add_fit_arguments  # imports no JAX
from jaxsr.train.command import add_arguments as add_train_arguments  # imports no JAX


def _info(args: argparse.Namespace) -> int:
    import jax

    import jaxsr
    from jaxsr.expr import operators

    print(f"jaxsr {jaxsr.__version__} (distribution jaxsr-e2e), Python {platform.python_version()}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    for device in jax.devices():
        print(f"  device {device.id}: {device.device_kind} ({device.platform})")
    print(f"operators: {', '.join(op.name for op in operators.FUNCTIONS)}")
    shipped = _shipped_models()
    if shipped:
        print("models (shipped with the package; model card: docs/model_card.md):")
        for line in shipped:
            print(f"  {line}")
    else:
        print("models: none shipped in this installation (jaxsr/weights/default is missing, so "
              "model='default' falls back to the untrained 'tiny' config)")
    if args.config is not None:
        return _print_model_info(args.config)
    return 0


def _shipped_models() -> list[str]:
    """One line per model inside the package: name, architecture, parameters, size on disk.

    Reads only model.json and file sizes, so ``jaxsr info`` stays fast (no arrays loaded).
    """
    from jaxsr.model import param_counts
    from jaxsr.weights import WeightsFormatError, read_weights_config
    from jaxsr.weights.format import default_model_path

    path = default_model_path()
    if path is None:
        return []
    try:
        config, meta = read_weights_config(path)
    except (WeightsFormatError, OSError) as err:
        return [f"default: unreadable ({err})"]
    n_params = meta.get("n_parameters") or param_counts(config)["total"]
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    source = meta.get("metadata", {}).get("source", {})
    arch = source.get("train_config", {}).get("model")
    arch_text = f"'{arch}' architecture, " if arch else ""
    return [f"default: {arch_text}{n_params:,} parameters, {size / 1e6:.1f} MB on disk ({path})"]


def _print_model_info(spec: str) -> int:
    """Sizes and parameter counts of a named config or of a weights directory."""
    from pathlib import Path

    from jaxsr.model import CONFIGS, get_config, param_counts
    from jaxsr.weights import WeightsFormatError, read_weights_config

    if spec in CONFIGS:
        config, source = get_config(spec), f"config {spec!r}"
    else:
        try:
            config, meta = read_weights_config(Path(spec))
        except (WeightsFormatError, OSError) as err:
            raise CommandError(f"--config {spec!r} is neither a config ({', '.join(CONFIGS)}) "
                               f"nor weights: {err}", errors.MODEL) from err
        origin = meta.get("metadata", {}).get("source", {}).get("file")
        source = f"weights {spec}" + (f" (converted from {origin})" if origin else "")
    c = config
    print(f"model: {source}")
    print(f"  embedder: {c.tokens_per_point} tokens x {c.embedder_dim} -> "
          f"{c.embedder_hidden_layers} x {c.embedder_hidden_dim} -> {c.encoder_dim}")
    print(f"  encoder: {c.encoder_layers} layers, dim {c.encoder_dim}, {c.encoder_heads} heads, "
          f"ffn {c.encoder_ffn_dim}, no positions")
    print(f"  decoder: {c.decoder_layers} layers, dim {c.decoder_dim}, {c.decoder_heads} heads, "
          f"ffn {c.decoder_ffn_dim}, {c.max_positions} positions, "
          f"vocabulary {c.decoder_vocab_size}")
    print(f"  compute dtype: {c.dtype}")
    print("parameters (tied output matrix counted once):")
    for name, count in param_counts(config).items():
        print(f"  {name:<9}{count:>14,}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Converts the reference's model1.pt into a jaxsr weights directory."""
    from pathlib import Path

    from jaxsr.model import count_params
    from jaxsr.weights import load_weights
    from jaxsr.weights.convert import convert_reference

    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create OUT_DIR {args.out_dir}: {_os_reason(err)}",
                           errors.OUTPUT) from err
    try:
        out = convert_reference(args.model_pt, out_dir)
        weights = load_weights(out)
    except ValueError as err:  # CheckpointError, WeightsFormatError, ParamsMismatchError
        raise CommandError(f"cannot convert {args.model_pt}: {err}", errors.MODEL) from err
    except OSError as err:
        writing = err.filename is not None and _inside(err.filename, out_dir)
        status, what = (errors.OUTPUT, f"cannot write {out_dir}") if writing else \
            (errors.MODEL, f"cannot read {args.model_pt}")
        raise CommandError(f"{what}: {_os_reason(err)}", status) from err
    c = weights.config
    print(f"converted {args.model_pt} -> {out} ({count_params(weights.params):,} parameters: "
          f"{c.encoder_layers} encoder / {c.decoder_layers} decoder layers, dim {c.decoder_dim}, "
          f"embedder {c.embedder_dim})")
    vocab_checked = weights.metadata.get("source", {}).get("vocabulary_checked")
    vocab = ("vocabularies equal jaxsr's" if vocab_checked
             else "no vocabulary in the file (jaxsr's assumed)")
    print(f"checked: nothing in the pickle was executed; {vocab}; every tensor mapped with "
          "the right shape; output projection tied; sha256 of params.npz recorded")
    print(f"decoding defaults: {weights.decoding}")
    return 0


def _export_reference(args: argparse.Namespace) -> int:
    """Writes jaxsr weights as the reference's model file (the inverse of convert)."""
    from jaxsr.weights.convert import options_path
    from jaxsr.weights.reference_export import export_reference

    try:
        out = export_reference(args.weights, args.out_pt)
    except ValueError as err:  # ReferenceExportError, WeightsFormatError, ParamsMismatchError
        raise CommandError(f"cannot export {args.weights}: {err}", errors.MODEL) from err
    except OSError as err:
        writing = err.filename is not None and not _inside(err.filename, args.weights)
        status, what = (errors.OUTPUT, f"cannot write {args.out_pt}") if writing else \
            (errors.MODEL, f"cannot read {args.weights}")
        raise CommandError(f"{what}: {_os_reason(err)}", status) from err
    print(f"exported {args.weights} -> {out} ({out.stat().st_size / 1e6:.1f} MB, the "
          f"reference's embedder/encoder/decoder state dicts) and {options_path(out)} (its "
          "options); the reference loads it with --reload_model and those options")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Refines the constants of the 14 Strogatz formulas at once, from perturbed guesses."""
    from jaxsr import datasets
    from jaxsr.expr import Expr
    from jaxsr.metrics import r2_score
    from jaxsr.refine import refine_constants

    rng = np.random.default_rng(args.seed)
    problems = [datasets.strogatz(name) for name in datasets.STROGATZ]
    truths = [Expr.from_sympy(p.formula, p.feature_names) for p in problems]
    # A model's guess: the true skeletons with every constant off by about 30%.
    guesses = [t.with_constants(t.constants() * (1 + 0.3 * rng.standard_normal(t.n_constants)))
               for t in truths]
    # The systems have different numbers of points: pad to one N, with weight 0 on padding.
    n_max = max(len(p.y) for p in problems)
    pad = lambda a: np.pad(a, [(0, n_max - len(a))] + [(0, 0)] * (a.ndim - 1))
    X = np.stack([pad(p.X) for p in problems])
    y = np.stack([pad(p.y) for p in problems])
    weight = np.stack([pad(np.ones(len(p.y))) for p in problems])

    result = refine_constants(guesses, X, y, sample_weight=weight,
                              dataset_index=np.arange(len(problems)), dtype="float64",
                              max_iter=args.max_iter, solver=args.solver)
    print(f"Refined the constants of {len(problems)} Strogatz formulas in one batched call "
          f"(solver {args.solver}, {result.seconds:.2f} s incl. compilation).")
    print(f"{'system':<11} {'R2 guess':>10} {'R2 refined':>11}  refined formula")
    for p, guess, fitted in zip(problems, guesses, result.exprs):
        before = r2_score(p.y, guess.evaluate(p.X))
        after = r2_score(p.y, fitted.evaluate(p.X))
        print(f"{p.name:<11} {before:>10.4f} {after:>11.6f}  "
              f"{fitted.infix(names=p.feature_names, precision=4)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from jaxsr.model.params import ParamsMismatchError
    from jaxsr.train.command import run
    from jaxsr.train.loop import NonFiniteLossError
    from jaxsr.weights import WeightsFormatError

    try:
        return run(args)
    except NonFiniteLossError as err:
        raise CommandError(str(err), errors.TRAINING) from err
    except (WeightsFormatError, ParamsMismatchError) as err:  # --export
        raise CommandError(f"cannot export: {err}", errors.MODEL) from err
    except (ValueError, FileNotFoundError) as err:  # the config, --set, the workdir
        raise CommandError(str(err), errors.USAGE) from err
    except OSError as err:
        raise CommandError(f"cannot write to {args.workdir}: {_os_reason(err)}",
                           errors.OUTPUT) from err


def _fit(args: argparse.Namespace) -> int:
    from jaxsr.regressor.command import run

    return run(args)


def _os_reason(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return f"{err.strerror or err}{where}"


def _inside(filename, folder) -> bool:
    from pathlib import Path

    try:
        return Path(os.fsdecode(filename)).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError, TypeError):
        return False


def _enable_compilation_cache() -> None:
    """Keeps XLA's compiled code on disk between runs (a command's first run compiles the
    model and the evaluator for tens of seconds on a CPU; later runs load it). The location
    is $JAXSR_CACHE_DIR, default ~/.cache/jaxsr/xla; JAXSR_CACHE_DIR="" turns it off. An
    application's choice, so the library itself never sets it."""
    import os

    path = os.environ.get("JAXSR_CACHE_DIR", os.path.expanduser("~/.cache/jaxsr/xla"))
    if not path:
        return
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", path)


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        raise CommandError(f"{self.prog}: {message} (see {self.prog} --help)", errors.USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxsr", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error, not just its one-line message")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, **kwargs)
        # SUPPRESS: an absent sub-command --debug must not reset "jaxsr --debug fit ...".
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="print the traceback of an error too")
        return sub

    info = command("info", help="version, JAX devices and available models")
    info.add_argument("--config", metavar="NAME_OR_PATH", default=None,
                      help="also print a model's sizes and parameter counts per module: "
                           "a config name (paper, small, tiny) or a weights directory")
    demo = command("demo", help="refine the constants of known formulas on bundled data")
    demo.add_argument("--seed", type=int, default=0, help="seed of the perturbed guesses")
    demo.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations at most")
    demo.add_argument("--solver", default="batched", choices=("batched", "jaxopt", "optax"),
                      help="refinement solver (see jaxsr.refine.refine_constants)")
    convert = command(
        "convert", help="convert the reference's model1.pt to jaxsr weights (no torch needed)")
    convert.add_argument("model_pt", metavar="MODEL_PT",
                         help="the reference checkpoint, model1.pt")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the weights to")
    export = command(
        "export-reference",
        help="write jaxsr weights as the reference's model file (OUT.pt, for its "
             "--reload_model) and its options (OUT.json); no torch needed")
    export.add_argument("weights", metavar="WEIGHTS",
                        help="a weights directory or a model name (default)")
    export.add_argument("out_pt", metavar="OUT_PT",
                        help="the model file to write; its options go to the .json beside it")
    add_train_arguments(command(
        "train", help="train a model; resumes from the latest checkpoint in --workdir"))
    add_fit_arguments(command(
        "fit", help="fit a formula to a table: jaxsr fit DATA --target COLUMN"))
    return parser


HANDLERS = {"info": _info, "demo": _demo, "convert": _convert, "train": _train, "fit": _fit,
            "export-reference": _export_reference}


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status (never raises for bad input)."""
    started = time.monotonic()  # before JAX's import: `jaxsr train --max-time` counts from here
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("JAXSR_DEBUG", "") not in ("", "0")
    try:
        args = _parser().parse_args(argv)
        args.started = started
        _enable_compilation_cache()
        return HANDLERS[args.command](args)
    except CommandError as err:
        return _report(err, str(err), err.status, debug)
    except KeyboardInterrupt as err:
        return _report(err, "interrupted", errors.INTERRUPTED, debug)
    except BrokenPipeError:  # the reader went away (``| head``): not an error of ours
        _silence_stdout()
        return errors.BROKEN_PIPE
    except Exception as err:  # noqa: BLE001 (a bug: still one line, unless --debug)
        message = (f"internal error: {type(err).__name__}: {err} (a bug in jaxsr; run again "
                   "with --debug for the traceback)")
        return _report(err, message, errors.INTERNAL, debug)


def _report(err: BaseException, message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"error: {one_line(message)}", file=sys.stderr)
    return status


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's final flush does not fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def one_line(message: str) -> str:
    """A multi-line message (e.g. a list of problems) joined into one line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())

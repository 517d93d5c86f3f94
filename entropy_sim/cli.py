"""Command line: ``entropy-sim run CONFIG.toml --out DIR [--set key=value ...]`` (or ``--dry-run``)
and ``entropy-sim plot DIR [--metrics a,b]``. Bad input exits with status 2 and a message naming
the field; nothing is written unless the run completes."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from entropy_sim.errors import ConfigError


DESCRIPTION = """\
Simulate entropy collapse in policy-gradient RL: exact and sampled softmax policy updates over many
seeds and a grid of hyperparameters, logging at every step the entropy change the covariance law
predicts next to the change that really happened.

  entropy-sim run CONFIG.toml --out DIR      run a config; write DIR/metrics.parquet,
                                             DIR/summary.parquet and DIR/config.json
  entropy-sim run CONFIG.toml --dry-run      check a config; print it resolved, its grid, chunks
                                             and memory; run nothing, write nothing
  entropy-sim plot DIR                       draw the standard figure of a result folder
  entropy-sim list [SECTION]                 what exists: rules with their hyperparameters and
                                             options, objective pieces, every column's meaning,
                                             environment kinds and initial policies with their
                                             fields (SECTION: rules, pieces, columns, envs,
                                             policies)
"""

EPILOG = """\
Bad input (a config error, an existing --out) exits with status 2 and a message naming the field,
before anything is compiled or written; a run whose values become NaN or infinite exits with
status 3. 'entropy-sim COMMAND --help' describes each command; README.md describes the config."""

RUN_DESCRIPTION = """\
Run every seed at every grid point of a TOML config and write a result folder; with --dry-run,
only check the config and show what the run would do."""

RUN_EPILOG = """\
The folder appears only when the run is complete. Meanwhile the progress is kept after every chunk
in a hidden .DIR.progress/ beside it: a run that is killed resumes from its last completed chunk
when the same command is run again (a run that stops before its first chunk leaves nothing)."""


LIST_SECTIONS = ("rules", "pieces", "columns", "envs", "policies")  # catalog.SECTIONS


def _version() -> str:
    import platform

    import jax
    import jaxlib

    from entropy_sim import __version__
    return (f"entropy-sim {__version__} (jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
            f"Python {platform.python_version()})")


def _metric_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated metric names, e.g. entropy,return")
    return names


def main(argv=None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="entropy-sim", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the versions of entropy-sim, JAX and Python, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_p = sub.add_parser("run", help="run an experiment config and write a result folder",
                           description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                           formatter_class=formatter)
    run_p.add_argument("config", type=Path, help="TOML config file (README.md, Configuration)")
    run_p.add_argument("--out", type=Path, metavar="DIR",
                       help="result folder to create (required unless --dry-run)")
    run_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set algo.eta=[0.1,0.2] (repeatable; "
                            "values are TOML, bare words are strings)")
    run_p.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    run_p.add_argument("--quiet", action="store_true", help="no progress bar")
    run_p.add_argument("--dry-run", action="store_true",
                       help="check the config (with --set), print it resolved as TOML, then the "
                            "grid, seeds, steps, chunks, compiled programs and a memory estimate; "
                            "build and compile none of the run and write nothing")
    dist = run_p.add_argument_group("several processes (jax.distributed; resuming is single-process)")
    dist.add_argument("--distributed", action="store_true",
                      help="join JAX's multi-process runtime first (Slurm, Open MPI and TPU are "
                           "detected; otherwise give the three options below)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    dist.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    plot_p = sub.add_parser("plot", help="draw the figures of a result folder",
                            description="Draw a result folder's figure into DIR/figures/: by "
                                        "default overview.FORMAT (entropy and return over "
                                        "training, and the covariance law); with --metrics one "
                                        "panel per chosen metric (mean and spread over seeds).")
    plot_p.add_argument("results", type=Path, metavar="DIR",
                        help="result folder written by 'entropy-sim run'")
    plot_p.add_argument("--format", default="png", choices=("png", "pdf", "svg"),
                        help="file format of the figure: png, pdf or svg (default: png)")
    plot_p.add_argument("--metrics", type=_metric_list, metavar="NAME,NAME",
                        help="draw these metrics, one panel each, into "
                             "figures/NAME-NAME.FORMAT, e.g. --metrics entropy,return,kl (any "
                             "metric of the folder's summary.parquet)")
    list_p = sub.add_parser("list", help="list the rules, objective pieces, columns, environment "
                                         "kinds and initial policies, read off their declarations")
    list_p.add_argument("section", nargs="?", choices=LIST_SECTIONS,
                        help="one section only (default: all)")
    list_p.add_argument("--markdown", action="store_true", help="Markdown tables (as in the README)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for run.json
    if args.command == "run" and args.out is None and not args.dry_run:
        run_p.error("the following arguments are required: --out (or --dry-run)")
    try:
        if args.command == "run":
            return _dry_run(args) if args.dry_run else _run(args)
        if args.command == "list":
            return _list(args)
        return _plot(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"entropy-sim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress = checkpoint_folder(args.out) if getattr(args, "out", None) else None
        kept = (f"; the progress so far is in {progress}/ and the same command resumes it"
                if progress is not None and progress.exists() else "")
        print(f"entropy-sim: interrupted{kept}", file=sys.stderr)
        return 130


def _dry_run(args) -> int:
    """``run --dry-run``: validate, plan and print; nothing of the run is built, compiled or
    written."""
    from entropy_sim.api import load_config
    from entropy_sim.dryrun import plan
    from entropy_sim.results import check_writable

    config = load_config(args.config, args.overrides)
    if args.out is not None:
        check_writable(args.out, args.overwrite)
    print(plan(config).render())
    if args.out is not None:
        print(f"# would write {args.out}/")
    return 0


def _run(args) -> int:
    import dataclasses
    import os

    from entropy_sim.api import load_config, run
    from entropy_sim.engine import compile_cache
    from entropy_sim.engine.runner import NonFiniteError
    from entropy_sim.results import check_writable

    config = load_config(args.config, args.overrides)
    check_writable(args.out, args.overwrite)  # fail before compiling anything
    writer = True
    if args.distributed:
        import jax

        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        writer = jax.process_index() == 0
    progress = None if args.distributed else checkpoint_folder(args.out)
    if progress is not None and progress.exists():
        print(f"resuming from {progress}/ if it holds this config's progress", file=sys.stderr)
    try:  # JAX's persistent compilation cache: ENTROPY_SIM_COMPILATION_CACHE (compile_cache.py)
        with compile_cache.using(compile_cache.cli_dir(os.environ)):
            results = run(config, progress=not args.quiet and writer, checkpoint=progress)
    except NonFiniteError as err:
        print(f"entropy-sim: error: {err}", file=sys.stderr)
        return 3
    if not writer:
        return 0
    command = {"command": ["entropy-sim", *args.argv], "cwd": os.getcwd()}
    results = dataclasses.replace(results, provenance={**results.provenance, **command})
    results.save(args.out, overwrite=args.overwrite)
    if progress is not None:
        shutil.rmtree(progress, ignore_errors=True)
    files = ", ".join(sorted(p.name for p in args.out.iterdir()))
    runs = len(config.runs())
    print(f"wrote {args.out}/: {files} ({len(results.steps)} logged steps x {config['seeds']} "
          f"seeds x {len(results.swept)} grid points"
          + (f" in {runs} compiled runs)" if runs > 1 else ")"))
    return 0


def checkpoint_folder(out: Path) -> Path:
    """Where ``run`` keeps the progress of ``--out DIR``: the hidden ``.DIR.progress`` beside it,
    removed once ``DIR`` is written. A killed run started again with the same command resumes."""
    return out.parent / f".{out.name}.progress"


def _list(args) -> int:
    from entropy_sim import catalog

    sections = [args.section] if args.section else list(catalog.SECTIONS)
    render = catalog.markdown if args.markdown else catalog.text
    print("\n\n".join(render(section) for section in sections))
    return 0


def _plot(args) -> int:
    from entropy_sim.plotting import plot_results

    paths = plot_results(args.results, fmt=args.format, metrics=args.metrics)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

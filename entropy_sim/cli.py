"""Command line: ``entropy-sim run CONFIG.toml --out DIR [--set key=value ...]`` and
``entropy-sim plot DIR``. Bad input exits with status 2 and a message naming the field; nothing
is written unless the run completes."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from entropy_sim.errors import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="entropy-sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run an experiment config and write a result folder")
    run_p.add_argument("config", type=Path, help="TOML config file")
    run_p.add_argument("--out", type=Path, required=True, help="result folder to create")
    run_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set algo.eta=[0.1,0.2] (repeatable)")
    run_p.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    run_p.add_argument("--quiet", action="store_true", help="no progress bar")
    dist = run_p.add_argument_group("several processes (jax.distributed; resuming is single-process)")
    dist.add_argument("--distributed", action="store_true",
                      help="join JAX's multi-process runtime first (Slurm, Open MPI and TPU are "
                           "detected; otherwise give the three options below)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    dist.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    plot_p = sub.add_parser("plot", help="render the standard figures of a result folder")
    plot_p.add_argument("results", type=Path, help="result folder written by 'entropy-sim run'")
    plot_p.add_argument("--format", default="png", choices=("png", "pdf", "svg"))
    list_p = sub.add_parser("list", help="list the rules, objective pieces and columns, read off "
                                         "their declarations")
    list_p.add_argument("section", nargs="?", choices=("rules", "pieces", "columns"),
                        help="one section only (default: all)")
    list_p.add_argument("--markdown", action="store_true", help="Markdown tables (as in the README)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for run.json
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list(args)
        return _plot(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"entropy-sim: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import dataclasses
    import os

    from entropy_sim import compile_cache
    from entropy_sim.api import load_config, run
    from entropy_sim.results import check_writable
    from entropy_sim.runner import NonFiniteError

    config = load_config(args.config, args.overrides)
    check_writable(args.out, args.overwrite)  # fail before compiling anything
    writer = True
    if args.distributed:
        import jax

        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        writer = jax.process_index() == 0
    progress = None if args.distributed else checkpoint_folder(args.out)
    if progress is not None and (progress / "manifest.json").exists():
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
    print(f"wrote {args.out}/: {files} ({len(results.steps)} logged steps x {config['seeds']} "
          f"seeds x {len(results.swept)} grid points)")
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

    paths = plot_results(args.results, fmt=args.format)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

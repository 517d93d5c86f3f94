"""Command line: ``entropy-sim run CONFIG.toml --out DIR [--set key=value ...]`` and
``entropy-sim plot DIR``. Bad input exits with status 2 and a message naming the field; nothing
is written unless the run completes."""

from __future__ import annotations

import argparse
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
    plot_p = sub.add_parser("plot", help="render the standard figures of a result folder")
    plot_p.add_argument("results", type=Path, help="result folder written by 'entropy-sim run'")
    plot_p.add_argument("--format", default="png", choices=("png", "pdf", "svg"))
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _plot(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"entropy-sim: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from entropy_sim.api import load_config, run
    from entropy_sim.results import check_writable
    from entropy_sim.runner import NonFiniteError

    config = load_config(args.config, args.overrides)
    check_writable(args.out, args.overwrite)  # fail before compiling anything
    try:
        results = run(config, progress=not args.quiet)
    except NonFiniteError as err:
        print(f"entropy-sim: error: {err}", file=sys.stderr)
        return 3
    results.save(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}/metrics.parquet ({len(results.steps)} steps x {config['seeds']} seeds "
          f"x {len(results.swept)} grid points), summary.parquet, config.json")
    return 0


def _plot(args) -> int:
    from entropy_sim.plotting import plot_results

    paths = plot_results(args.results, fmt=args.format)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

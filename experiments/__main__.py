"""``python -m experiments [all | NAME ...] [--quick] [--out DIR] [--gallery]``: run experiments,
write their result folders and figures, and print each numeric claim with its bounds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from entropy_sim.engine import runner
from experiments.common import EXPERIMENTS, main


DESCRIPTION = """\
Run the experiments under experiments/, one per claim of the source documents that a tabular
simulation can test: write each one's result folders, figures and claims.json under --out, print
each numeric claim with its bounds, and end with the tally of claims that hold and fail. Exits with
status 1 if a claim is outside its bounds."""


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help=f"'all' or any of: {', '.join(EXPERIMENTS)} (a prefix such as e4 works)")
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute each")
    parser.add_argument("--out", type=Path, default=Path("results/experiments"), metavar="DIR",
                        help="parent of the result folders (default: results/experiments)")
    parser.add_argument("--gallery", action="store_true",
                        help="also copy each main figure to experiments/figures/ (README gallery)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        names = select(args.names)
    except ValueError as err:
        parser.error(str(err))
    failed, held = [], 0
    for name in names:
        start = time.perf_counter()
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        table = main(name, args.out, quick=args.quick, progress=not args.quiet, gallery=args.gallery)
        for key, row in table.items():
            bounds = f"[{_fmt(row['low'])}, {_fmt(row['high'])}]" if row["holds"] is not None else ""
            mark = {True: "ok  ", False: "FAIL", None: "    "}[row["holds"]]
            print(f"   {mark} {key:<34} {row['value']:>12.5g} {bounds}")
            if row["holds"] is False:
                failed.append(f"{name}.{key}")
            held += row["holds"] is True
        print(f"   wrote {args.out / name}/ in {time.perf_counter() - start:.0f} s", flush=True)
        runner.clear_compiled()  # the next experiment shares no program with this one
    print(f"claims: {held} hold, {len(failed)} fail ({len(names)} experiment"
          f"{'s' if len(names) != 1 else ''})", flush=True)
    if failed:
        print(f"claims outside their bounds: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def select(names: list[str]) -> list[str]:
    """Expand ``all`` and unique prefixes (``e4`` -> ``e4_aepo``); raise ``ValueError`` otherwise."""
    if names == ["all"]:
        return list(EXPERIMENTS)
    chosen = []
    for name in names:
        matches = [e for e in EXPERIMENTS if e == name or e.startswith(name)]
        if len(matches) != 1:
            raise ValueError(f"unknown experiment {name!r}; choose from: all, {', '.join(EXPERIMENTS)}")
        chosen.append(matches[0])
    return chosen


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}"


if __name__ == "__main__":
    sys.exit(cli())

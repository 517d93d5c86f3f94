"""End-to-end benchmark: what a user meets from the command to the result files.

    python benchmarks/end_to_end.py [--seeds 10000] [--steps 1000] [--rounds 2]
                                    [--output full|summary] [--json out.json] [--keep DIR]

Writes a config (exact NPG, eta = 0.1, on 10-armed bandits, uniform initial policy) into a
temporary folder and runs

    python -m entropy_sim.cli run CONFIG.toml --out DIR --quiet

``--rounds`` times, one after the other, each in a fresh process with a fresh ``DIR``. Each round
is timed on the wall clock from starting the process to its exit (Python and JAX start-up, reading
the config, compiling or loading the compiled programs, the run, writing the result folder), and
its peak resident memory is read from ``os.wait4``. ``ENTROPY_SIM_COMPILATION_CACHE`` points at an
empty folder inside the temporary one, so the first round compiles and fills the persistent
compilation cache and the later rounds load their programs from it (a user's second run).

The baseline, run in a fresh process too: the vectorised NumPy loop of the same maths, every
per-step diagnostic kept (``benchmarks/scale.py``'s ``numpy_npg``), on the same bandits and initial
logits (built with ``es.build``). Only the loop is timed; the whole process's wall time (imports,
building the inputs) is reported beside it. With ``--output summary`` the engine keeps statistics
over seeds only, while the NumPy loop still keeps every seed's diagnostics.

Timings are noisy on this shared 2-core machine, so the baseline is measured in the same run and
the figures that count are the ratios: each round's wall time over the NumPy loop's time. The last
line is the last (warm-cache) round's ratio against the target of 2. ``--json`` writes every
number; ``--keep DIR`` keeps the last round's result folder (otherwise everything is deleted).
Not part of the unit tests (``tests/test_benchmarks.py`` runs it at a tiny size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE_VAR = "ENTROPY_SIM_COMPILATION_CACHE"  # compile_cache.ENV_VAR
TARGET = 2.0  # last round's wall time / NumPy loop time

CONFIG = """\
seed = 0
seeds = {seeds}
steps = {steps}
output = "{output}"
[env]
kind = "bandit"
arms = 10
[policy]
init = "uniform"
[algo]
name = "npg"
eta = 0.1
"""


def write_config(folder: Path, seeds: int, steps: int, output: str) -> Path:
    """The benchmark's TOML config, written into ``folder``."""
    path = folder / "npg_bandit.toml"
    path.write_text(CONFIG.format(seeds=seeds, steps=steps, output=output))
    return path


def child_env(cache: Path) -> dict:
    """This process's environment, with this checkout first on ``PYTHONPATH`` and the compilation
    cache in ``cache``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, CACHE_VAR: str(cache)}


def run_child(cmd: list[str], env: dict, logs: Path) -> dict:
    """Run ``cmd`` to its end: wall seconds (start to exit), peak RSS in MB (``ru_maxrss`` of
    ``os.wait4``, kilobytes on Linux) and its stdout. Output goes to files in ``logs`` (no pipe to
    fill). Exits with status 1, printing the child's stderr, if it fails."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w+") as out, open(logs / "stderr", "w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        print(f"failed (exit status {proc.returncode}): {' '.join(cmd)}\n{stderr}", file=sys.stderr)
        sys.exit(1)
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def cli_round(config: Path, out: Path, env: dict) -> dict:
    """One ``entropy-sim run`` in a fresh process, writing ``out``."""
    cmd = [sys.executable, "-m", "entropy_sim.cli", "run", str(config), "--out", str(out), "--quiet"]
    result = run_child(cmd, env, out.parent / f"{out.name}.logs")
    del result["stdout"]
    return result


def numpy_loop_seconds(config: Path) -> float:
    """Seconds of ``scale.numpy_npg`` alone on the config's bandits and initial logits (the
    ``--numpy-only`` child; imports entropy_sim and JAX to build them)."""
    import tomllib

    sys.path.insert(0, str(HERE))
    import scale  # benchmarks/scale.py: imports entropy_sim, which configures XLA first

    import entropy_sim as es

    cfg = tomllib.loads(config.read_text())
    exp = es.build(es.Config(cfg))
    r, rho, theta = scale.numpy_inputs(exp, scale.SEEDS_LAST)
    eta = scale.F32(exp.hparams["eta"][0])
    start = time.perf_counter()
    scale.numpy_npg(r, rho, theta, eta, cfg["steps"], scale.SEEDS_LAST)
    return time.perf_counter() - start


def numpy_baseline(config: Path, env: dict, logs: Path) -> dict:
    """The NumPy loop in a fresh process: loop seconds, the process's wall time and peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--numpy-only", str(config)]
    result = run_child(cmd, env, logs)
    loop = json.loads(result.pop("stdout").strip().splitlines()[-1])["loop_s"]
    return {"loop_s": loop, "process_wall_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"]}


def folder_files(folder: Path) -> list[dict]:
    """The files under ``folder`` with their sizes in bytes."""
    return [{"name": str(p.relative_to(folder)), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def size_text(n: int) -> str:
    """A byte count in B, kB or MB (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def report(args, rounds: list[dict], numpy: dict, files: list[dict], cache: list[dict]) -> str:
    """The printed table: the rounds, the baseline, the last folder's files, the final ratio."""
    lines = [f"exact NPG, 10-armed bandits, {args.seeds} seeds x {args.steps} steps, "
             f"output = {args.output!r} ({os.cpu_count()} CPUs, Python {platform.python_version()})",
             "",
             f"{'':36}{'wall s':>9}{'peak RSS MB':>13}{'/ NumPy loop':>14}"]
    for i, r in enumerate(rounds, 1):
        label = f"entropy-sim run, round {i}" + (" (compiles)" if i == 1 else "")
        lines.append(f"{label:36}{r['wall_s']:9.3f}{r['peak_rss_mb']:13.0f}{r['ratio']:13.2f}x")
    lines.append(f"{'NumPy loop (timed alone)':36}{numpy['loop_s']:9.3f}")
    lines.append(f"{'NumPy process (whole)':36}{numpy['process_wall_s']:9.3f}"
                 f"{numpy['peak_rss_mb']:13.0f}")
    lines += ["", f"compilation cache: {len(cache)} files, "
                  f"{size_text(sum(f['bytes'] for f in cache))}", "last result folder:"]
    width = max((len(f["name"]) for f in files), default=0) + 2
    lines += [f"  {f['name']:{width}}{size_text(f['bytes']):>10}" for f in files]
    warm = "warm cache" if len(rounds) > 1 else "cold cache"
    lines += ["", f"last run ({warm}) / NumPy loop: {rounds[-1]['ratio']:.2f}x (target <= {TARGET:g})"]
    return "\n".join(lines)


def benchmark(args, tmp: Path) -> dict:
    """Every measurement, in ``tmp``; returns the numbers (``--json``'s content)."""
    config = write_config(tmp, args.seeds, args.steps, args.output)
    env = child_env(tmp / "jax-cache")
    rounds, out = [], None
    for i in range(1, args.rounds + 1):
        out = tmp / f"round{i}"
        print(f"round {i} of {args.rounds} ...", file=sys.stderr, flush=True)
        rounds.append(cli_round(config, out, env))
    print("NumPy loop ...", file=sys.stderr, flush=True)
    numpy = numpy_baseline(config, env, tmp / "numpy.logs")
    for r in rounds:
        r["ratio"] = r["wall_s"] / numpy["loop_s"]
    files, cache = folder_files(out), folder_files(tmp / "jax-cache")
    print(report(args, rounds, numpy, files, cache))
    if args.keep is not None:
        shutil.move(str(out), str(args.keep))
    return {"seeds": args.seeds, "steps": args.steps, "output": args.output,
            "cpus": os.cpu_count(), "rounds": rounds, "numpy": numpy, "files": files,
            "cache_files": len(cache), "cache_bytes": sum(f["bytes"] for f in cache),
            "last_ratio": rounds[-1]["ratio"], "target": TARGET}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="CLI runs, one after the other")
    parser.add_argument("--output", choices=("full", "summary"), default="full")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the last result folder here")
    parser.add_argument("--numpy-only", type=Path, metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.numpy_only is not None:  # the baseline's child process
        print(json.dumps({"loop_s": numpy_loop_seconds(args.numpy_only)}))
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists")
    with tempfile.TemporaryDirectory(prefix="entropy-sim-e2e-") as tmp:
        numbers = benchmark(args, Path(tmp))
    if args.json is not None:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accelerator benchmark: seed-steps per second on one GPU (or whatever JAX's default device is).

    python benchmarks/accelerator.py [--quick] [--json out.json]

Sized to finish in under 5 minutes on one data-centre GPU. Every workload runs ``runner.run_arrays``
twice on the same experiment: the first call compiles (``compile s`` = first minus second), the
second is timed whole (host transfers and the summary statistics included). Workloads, all in
summary mode with the default quantiles, so what leaves the device does not grow with the seeds:

- exact NPG, 10-armed bandits (means uniform on [0, 1], one per seed), every diagnostic, at
  10^4, 10^5 and 10^6 seeds x 1,000 steps (the target: 10^9 seed-steps per second at 10^6 seeds);
- the same at 10^6 seeds without the quantiles (a sort over the seeds per step and metric), with
  statistics of every tenth step only (``log_every = 10``), in one seed block of 10^6 (the default
  on accelerators is 65,536 seeds per block) and in float64;
- sampled REINFORCE with the batch-mean baseline, 10-armed Bernoulli bandits, B = 64;
- GRPO on a token tree (8 prompts, vocabulary 3, length 3, 8 prompts x G = 8 per step).

Beside them, in the same run: the NumPy reference of the exact NPG workload from
``benchmarks/scale.py`` (float32, vectorised over seeds on the last axis, every diagnostic) on the
host's CPU, so each engine rate has a ratio against a baseline measured alongside it.
``kernels/step`` counts the kernels XLA launches in one step: the instructions of the compiled
step loop's body that are not fused into others and are not bookkeeping (parameters, tuples,
bitcasts, loops). ``--quick`` shrinks every size (a CPU smoke run). Not part of the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path


import entropy_sim as es  # noqa: F401  (configures XLA before JAX starts)
import jax

from entropy_sim.engine import runner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the NumPy reference lives beside this file)

#  label, workload, seeds, steps, extra top-level config
DEFAULT = [
    ("npg", "npg", 10_000, 1_000, {}),
    ("npg", "npg", 100_000, 1_000, {}),
    ("npg", "npg", 1_000_000, 1_000, {}),
    ("npg, no quantiles", "npg", 1_000_000, 1_000, {"quantile_metrics": []}),
    ("npg, log_every 10", "npg", 1_000_000, 1_000, {"log_every": 10}),
    ("npg, seed_block 1000000", "npg", 1_000_000, 1_000, {"seed_block": 1_000_000}),
    ("npg, float64", "npg", 1_000_000, 1_000, {"dtype": "float64"}),
    ("reinforce B=64", "reinforce", 1_000_000, 200, {}),
    ("grpo token tree", "grpo", 100_000, 100, {}),
]
QUICK = [(label, name, max(seeds // 1000, 100), max(steps // 20, 10), extra)
         for label, name, seeds, steps, extra in DEFAULT
         if "seed_block" not in extra]
NUMPY = {"default": (100_000, 50), "quick": (2_000, 20)}  # seeds, steps of the NumPy baseline

# Instructions that launch no kernel of their own.
BOOKKEEPING = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "conditional", "call", "after-all", "partition-id", "replica-id", "opt-barrier",
               "add-dependency", "copy-start", "copy-done", "domain"}


def config(name: str, seeds: int, steps: int, extra: dict) -> dict:
    top = {"output": "summary", **extra}
    if name == "grpo":
        return {**top, "seeds": seeds, "steps": steps, "env": {"kind": "token_tree", "vocab": 3, "length": 3, "prompts": 8,
                               "num_correct": 2, "shared": True},
                "policy": {"init": "gaussian", "scale": 2.0},
                "algo": {"name": "grpo", "eta": 2.0, "batch": 8, "group": 8}}
    return scale.config(name, seeds, steps, **top)


def count_kernels(hlo: str) -> int:
    """Kernels in the largest loop body of compiled HLO text (the step loop)."""
    fused = set(re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", hlo))
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    counts, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith("  "):
            current = head.group(1)
            counts[current] = 0
            continue
        op = re.match(r"^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+(?:\s*\{[^}]*\})?\s+([\w\-]+)\(", line)
        if current is not None and op and op.group(1) not in BOOKKEEPING:
            counts[current] += 1
    loops = [counts[b] for b in bodies if b in counts and b not in fused]
    return max(loops, default=0)


class Capture:
    """Records the first chunk program ``runner.run_arrays`` calls and its argument shapes."""

    def __init__(self):
        self.fn, self.shapes, self.original = None, None, runner.compiled_chunk

    def __enter__(self):
        def capturing(*args, **kwargs):
            fn = self.original(*args, **kwargs)

            def call(*xs):
                if self.fn is None:
                    self.fn, self.shapes = fn, jax.tree.map(
                        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=x.sharding if x.ndim else None), xs)
                return fn(*xs)
            return call

        runner.compiled_chunk = capturing
        return self

    def __exit__(self, *exc):
        runner.compiled_chunk = self.original

    def kernels_per_step(self) -> int:
        return count_kernels(self.fn.lower(*self.shapes).compile().as_text())


def time_workload(cfg: dict) -> dict:
    exp = es.build(es.Config(cfg))
    plan = runner.make_plan(exp)
    with Capture() as capture:
        start = time.perf_counter()
        runner.run_arrays(exp, progress=False)
        first = time.perf_counter() - start
    start = time.perf_counter()
    runner.run_arrays(exp, progress=False)
    second = time.perf_counter() - start
    return {"seconds": second, "compile_s": max(first - second, 0.0),
            "rate": cfg["seeds"] * cfg["steps"] / second,
            "chunks": len(plan.chunks), "seed_block": plan.layout.block,
            "kernels_per_step": capture.kernels_per_step()}


def numpy_rate(seeds: int, steps: int) -> float:
    exp = es.build(es.Config(scale.config("npg", seeds, steps)))
    start = time.perf_counter()
    scale.run_numpy("npg", exp, steps)
    return seeds * steps / (time.perf_counter() - start)


def fmt(x: float) -> str:
    for scale_, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= scale_:
            return f"{x / scale_:.2f}{unit}"
    return f"{x:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "default"
    device = jax.devices()[0]
    report = {"device": f"{device.platform}: {device.device_kind} x {len(jax.devices())}",
              "jax": jax.__version__, "python": platform.python_version(), "rows": []}
    print(f"# {report['device']}, jax {report['jax']}", flush=True)
    base = numpy_rate(*NUMPY[size])
    report["numpy_npg_rate"] = base
    print(f"NumPy exact NPG on the host CPU: {fmt(base)} seed-steps/s", flush=True)
    print("| workload | seeds x steps | seed_block | chunks | compile s | run s | seed-steps/s "
          "| x NumPy | kernels/step |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for label, name, seeds, steps, extra in (QUICK if args.quick else DEFAULT):
        row = {"workload": label, "seeds": seeds, "steps": steps}
        try:
            row.update(time_workload(config(name, seeds, steps, extra)))
            print(f"| {label} | {seeds:,} x {steps:,} | {row['seed_block']:,} | {row['chunks']} | "
                  f"{row['compile_s']:.1f} | {row['seconds']:.2f} | {fmt(row['rate'])} | "
                  f"{row['rate'] / base:.1f} | {row['kernels_per_step']} |", flush=True)
        except Exception as err:  # one failing workload must not hide the others' numbers
            row["error"] = f"{type(err).__name__}: {err}"
            print(f"| {label} | {seeds:,} x {steps:,} | failed: {row['error'][:300]} |", flush=True)
        report["rows"].append(row)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        jax.clear_caches()
        runner.compiled_chunk.cache_clear()
        runner.compiled_init.cache_clear()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""What every experiment shares: a TOML file of runs with a quick size, an atomic results folder,
figures in PDF and PNG, and numeric claims checked against stated bounds.

An experiment is a module ``experiments/eN_name.py`` next to its config ``experiments/eN_name.toml``.
The module's docstring states the claim and the expected outcome; it defines

    CHECKS = {"claim_name": (low, high), ...}   # the bounds each numeric claim must satisfy
    def run(ctx: Context) -> dict[str, float]     # runs, draws figures, returns the claims

The TOML file holds one table per run, each a complete entropy_sim config, and optional quick
overrides merged in with ``--quick`` (a top-level ``[quick]`` table for every run and a
``quick`` sub-table per run)::

    [quick]
    seeds = 200

    [runs.npg]
    seeds = 2000
    steps = 200
    env = { kind = "bandit", arms = 10 }
    algo = { name = "npg", eta = [0.05, 0.1] }
    quick = { steps = 50 }       # or { skip = true }: full size only

``main`` writes ``results/experiments/eN_name/`` under a temporary name and renames it when the
experiment is complete: one subfolder per run (``metrics.parquet``, ``summary.parquet``,
``config.json``), ``figures/*.pdf`` and ``*.png``, and ``claims.json`` (each claim, its bounds and
whether it holds).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import time
import tomllib
from pathlib import Path

import numpy as np

import entropy_sim as es
from entropy_sim import plotting
from entropy_sim.results import atomic_dir

HERE = Path(__file__).resolve().parent
GALLERY = HERE / "figures"
EXPERIMENTS = (
    "e1_covariance_law",
    "e2_entropy_collapse",
    "e3_gradient_kl",
    "e4_aepo",
    "e5_convergence",
    "e6_failure_probability",
    "e7_entropy_performance",
    "e8_framework_methods",
    "e9_trust_regions",
)


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, tables recursively. Neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_runs(name: str, quick: bool) -> dict[str, dict]:
    """The raw config of every run of experiment ``name``, quick overrides applied if ``quick``."""
    spec = tomllib.loads((HERE / f"{name}.toml").read_text())
    common_quick = spec.get("quick", {})
    runs = {}
    for run_name, table in spec.get("runs", {}).items():
        table = dict(table)
        own_quick = dict(table.pop("quick", {}))
        if quick and own_quick.pop("skip", False):
            continue  # a full-size-only run
        runs[run_name] = merge(merge(table, common_quick), own_quick) if quick else table
    return runs


@dataclasses.dataclass
class Context:
    """Handed to an experiment's ``run``.

    Attributes:
      name: the experiment's name (its module name).
      out: the results folder being written (temporary until the experiment completes).
      quick: whether this is the quick size.
      progress: whether to show progress bars.
      runs: the raw config of every run, quick overrides applied.
    """

    name: str
    out: Path
    quick: bool
    progress: bool
    runs: dict[str, dict]

    def config(self, run: str, **changes) -> dict:
        """The raw config of ``run`` with top-level keys or whole tables replaced by ``changes``
        (``env={...}`` merges into the table)."""
        return merge(self.runs[run], changes)

    def run(self, run: str, *, save: bool = True, **changes) -> es.Results:
        """Run ``run`` (see ``config``); save its folder ``out/<run>`` unless ``save`` is false."""
        results = es.run(self.config(run, **changes), progress=self.progress)
        if save:
            results.save(self.out / run)
        return results

    def savefig(self, fig, stem: str) -> Path:
        """Write ``figures/<stem>.pdf`` and ``.png`` and close ``fig``; returns the PNG path. The
        figure named after the experiment is its main one: it also goes to ``figures/gallery.png``
        at screen resolution (the README gallery's copy)."""
        folder = self.out / "figures"
        folder.mkdir(exist_ok=True)
        fig.savefig(folder / f"{stem}.pdf")
        fig.savefig(folder / f"{stem}.png")
        if stem == self.name:
            fig.savefig(folder / "gallery.png", dpi=72)
        plotting.plt.close(fig)
        return folder / f"{stem}.png"


def module(name: str):
    return importlib.import_module(f"experiments.{name}")


def evaluate(claims: dict[str, float], checks: dict[str, tuple]) -> dict[str, dict]:
    """``{claim: {value, low, high, holds}}``; a claim missing or NaN never holds."""
    table = {}
    for key, (low, high) in checks.items():
        value = float(claims.get(key, math.nan))
        holds = bool(np.isfinite(value) and (low is None or value >= low)
                     and (high is None or value <= high))
        table[key] = {"value": value, "low": low, "high": high, "holds": holds}
    for key, value in claims.items():
        if key not in table:
            table[key] = {"value": float(value), "low": None, "high": None, "holds": None}
    return table


def main(name: str, out_root, *, quick: bool = False, progress: bool = True,
         gallery: bool = False) -> dict[str, dict]:
    """Run experiment ``name`` into ``out_root/name`` (replacing an earlier result folder of it)
    and return its evaluated claims. ``gallery`` also copies its main PNG to
    ``experiments/figures/<name>.png`` (the README gallery)."""
    mod = module(name)
    out = Path(out_root) / name
    start = time.perf_counter()
    with plotting.style(), atomic_dir(out, overwrite=True) as tmp:
        ctx = Context(name, tmp, quick, progress, load_runs(name, quick))
        claims = mod.run(ctx)
        table = evaluate(claims, mod.CHECKS)
        record = {"experiment": name, "quick": quick, "seconds": time.perf_counter() - start,
                  "claims": table}
        (tmp / "claims.json").write_text(json.dumps(record, indent=2) + "\n")
        if gallery:
            GALLERY.mkdir(exist_ok=True)
            (GALLERY / f"{name}.png").write_bytes((tmp / "figures" / "gallery.png").read_bytes())
    return table

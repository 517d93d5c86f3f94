"""Results: tidy pandas tables, the summary over seeds, and atomic result folders.

A result folder holds ``metrics.parquet`` (one row per grid point, seed and logged step),
``summary.parquet`` (per grid point, step and metric: mean and 95% intervals over seeds) and
``config.json`` (the resolved config). It is written under a temporary name and renamed into
place, so it appears complete or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from entropy_sim.config import Config
from entropy_sim.diagnostics import NAN_ALLOWED
from entropy_sim.summary import quantile_name, with_derived

# Column order of metrics tables: identifiers, then the covariance law, then the rest.
LEADING = ("seed", "step", "entropy", "dH_realized", "dH_pred_cov", "dH_pred_closed", "dH_within",
           "dH_shift", "return", "return_reg")
Z_95 = 1.959963984540054


@dataclasses.dataclass
class Results:
    """The outcome of a run.

    Attributes:
      config: the resolved config.
      arrays: ``{metric: [G, N, T]}`` per-seed arrays (grid point, seed, logged step); None when the
        run kept only statistics over seeds (``output = "summary"``). With ``on_nonfinite = "mark"``
        the boolean ``nonfinite`` flags rows with a NaN or infinite metric.
      steps: ``[T]`` the step index of each logged step.
      swept: the swept hyperparameter values of each of the ``G`` grid points.
      final_theta: ``[G, N, S, A]`` logits after the last step.
      stats: ``{metric: {stat: [G, T]}}`` statistics over seeds computed during the run (summary
        mode), else None.
    """

    config: Config
    arrays: dict[str, np.ndarray] | None
    steps: np.ndarray
    swept: list[dict]
    final_theta: np.ndarray
    stats: dict | None = None

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per (grid point, seed, step): swept hyperparameters, ``seed``, ``step``, metrics."""
        if self.arrays is None:
            raise ValueError('this run kept only statistics over seeds (output = "summary"); use '
                             '.summary(), or run with output = "full" for per-seed rows')
        num_grid, num_seeds, num_steps = next(iter(self.arrays.values())).shape
        rows = num_grid * num_seeds * num_steps
        cols: dict[str, np.ndarray] = {}
        for name in self.swept[0] if self.swept else ():
            cols[name] = np.repeat(np.array([p[name] for p in self.swept]), num_seeds * num_steps)
        cols["seed"] = np.tile(np.repeat(np.arange(num_seeds, dtype=np.int32), num_steps), num_grid)
        cols["step"] = np.tile(self.steps.astype(np.int32), num_grid * num_seeds)
        for name in _ordered(self.arrays):
            cols[name] = self.arrays[name].reshape(rows)
        return pd.DataFrame(cols)

    def summary(self) -> pd.DataFrame:
        """Per grid point, step and metric: ``mean``, ``std``, the 95% confidence interval of the
        mean (``ci_low``, ``ci_high``; normal approximation), the quantiles over seeds of the
        config's ``quantiles`` (default ``q025``, ``median``, ``q975``), and ``n``, the seeds counted
        (those whose metrics are all finite). Includes the covariance law's error metrics
        ``cov_error``, ``cov_abs_error``, ``cov_sign_agree``. Tidy (long) format."""
        if self.stats is not None:
            return stats_frame(self.stats, self.steps, self.swept, self.config["quantiles"])
        return summarize(self.arrays, self.steps, self.swept, tuple(self.config["quantiles"]))

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write ``metrics.parquet`` (full mode), ``summary.parquet`` and ``config.json`` atomically."""
        out = Path(out_dir)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            if self.arrays is not None:
                self.metrics.to_parquet(tmp / "metrics.parquet", index=False)
            self.summary().to_parquet(tmp / "summary.parquet", index=False)
            (tmp / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return out


def summarize(arrays: dict[str, np.ndarray], steps: np.ndarray, swept: list[dict],
              quantiles=(0.025, 0.5, 0.975)) -> pd.DataFrame:
    """Summary over the seed axis of ``{metric: [G, N, T]}``; see ``Results.summary``. Rows flagged
    ``nonfinite`` (or with a non-finite metric) are left out, as in the in-scan summary."""
    arrays = dict(arrays)
    flags = arrays.pop("nonfinite", None)
    arrays = with_derived(arrays)
    bad = np.zeros(next(iter(arrays.values())).shape, bool) if flags is None else flags.copy()
    for name, values in arrays.items():
        if name not in NAN_ALLOWED:
            bad |= ~np.isfinite(values)
    stats = {}
    n = np.sum(~bad, axis=1).astype(np.float64)
    for name, values in arrays.items():
        x = np.where(bad, np.nan, values.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=1) if bad.any() else x.mean(axis=1)
            std = np.sqrt(np.nansum((x - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1))
            qs = np.nanquantile(x, quantiles, axis=1) if bad.any() else np.quantile(x, quantiles, axis=1)
        stats[name] = {"mean": mean, "std": std, "n": n}
        stats[name].update({quantile_name(p): q for p, q in zip(quantiles, qs)})
    return stats_frame(stats, steps, swept, quantiles)


def stats_frame(stats: dict, steps: np.ndarray, swept: list[dict], quantiles) -> pd.DataFrame:
    """The tidy summary table of ``{metric: {stat: [G, T]}}`` with quantile columns in the order
    of ``quantiles``."""
    frames = []
    stats = {k: v for k, v in stats.items() if k != "nonfinite"}
    for name in _ordered(stats):
        st = stats[name]
        num_grid, num_steps = st["mean"].shape
        mean, std, n = (np.asarray(st[k], np.float64) for k in ("mean", "std", "n"))
        half = Z_95 * std / np.sqrt(np.maximum(n, 1))
        cols = {k: np.repeat([p[k] for p in swept], num_steps) for k in (swept[0] if swept else ())}
        cols.update(step=np.tile(steps, num_grid), metric=name, mean=mean.ravel(), std=std.ravel(),
                    ci_low=(mean - half).ravel(), ci_high=(mean + half).ravel())
        cols.update({k: np.asarray(st[k], np.float64).ravel()
                     for k in map(quantile_name, quantiles)})
        cols["n"] = n.ravel().astype(np.int64)
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def load(out_dir) -> tuple[pd.DataFrame, dict]:
    """``(metrics DataFrame, resolved config dict)`` of a result folder."""
    out = Path(out_dir)
    return pd.read_parquet(out / "metrics.parquet"), json.loads((out / "config.json").read_text())


class atomic_dir:
    """Context manager: a temporary folder beside ``out`` renamed to ``out`` on success and
    deleted on failure, so ``out`` is complete or absent."""

    def __init__(self, out: Path, *, overwrite: bool = False):
        self.out, self.overwrite = Path(out), overwrite

    def __enter__(self) -> Path:
        check_writable(self.out, self.overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def check_writable(out: Path, overwrite: bool) -> None:
    """Refuse to run when the result folder exists (unless ``overwrite``) or is a file."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")


def _ordered(arrays) -> list[str]:
    lead = [c for c in LEADING if c in arrays]
    return lead + sorted(c for c in arrays if c not in lead)

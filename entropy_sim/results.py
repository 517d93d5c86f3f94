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
from pathlib import Path

import numpy as np
import pandas as pd

from entropy_sim.config import Config

# Column order of metrics tables: identifiers, then the covariance law, then the rest.
LEADING = ("seed", "step", "entropy", "dH_realized", "dH_pred_cov", "dH_pred_closed", "dH_within",
           "dH_shift", "return", "return_reg")
Z_95 = 1.959963984540054


@dataclasses.dataclass
class Results:
    """The outcome of a run.

    Attributes:
      config: the resolved config.
      arrays: ``{metric: [G, N, T]}`` float arrays (grid point, seed, logged step).
      steps: ``[T]`` the step index of each logged step.
      swept: the swept hyperparameter values of each of the ``G`` grid points.
      final_theta: ``[G, N, S, A]`` logits after the last step.
    """

    config: Config
    arrays: dict[str, np.ndarray]
    steps: np.ndarray
    swept: list[dict]
    final_theta: np.ndarray

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per (grid point, seed, step): swept hyperparameters, ``seed``, ``step``, metrics."""
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
        mean (``ci_low``, ``ci_high``; normal approximation) and the 2.5%, 50% and 97.5% quantiles
        over seeds (``q025``, ``median``, ``q975``), with ``n`` seeds. Tidy (long) format."""
        return summarize(self.arrays, self.steps, self.swept)

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write ``metrics.parquet``, ``summary.parquet`` and ``config.json`` atomically."""
        out = Path(out_dir)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            self.metrics.to_parquet(tmp / "metrics.parquet", index=False)
            self.summary().to_parquet(tmp / "summary.parquet", index=False)
            (tmp / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return out


def summarize(arrays: dict[str, np.ndarray], steps: np.ndarray, swept: list[dict]) -> pd.DataFrame:
    """Summary over the seed axis of ``{metric: [G, N, T]}``; see ``Results.summary``."""
    frames = []
    for name in _ordered(arrays):
        x = arrays[name].astype(np.float64)
        num_grid, num_seeds, num_steps = x.shape
        mean = x.mean(axis=1)
        std = x.std(axis=1, ddof=1) if num_seeds > 1 else np.zeros_like(mean)
        half = Z_95 * std / np.sqrt(num_seeds)
        q025, median, q975 = np.quantile(x, [0.025, 0.5, 0.975], axis=1)
        cols = {k: np.repeat([p[k] for p in swept], num_steps) for k in (swept[0] if swept else ())}
        cols.update(step=np.tile(steps, num_grid), metric=name, mean=mean.ravel(), std=std.ravel(),
                    ci_low=(mean - half).ravel(), ci_high=(mean + half).ravel(), q025=q025.ravel(),
                    median=median.ravel(), q975=q975.ravel(), n=num_seeds)
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

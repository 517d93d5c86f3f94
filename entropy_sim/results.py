"""Results: tidy pandas tables, the summary over seeds, and atomic result folders.

A result folder holds ``metrics.parquet/`` (one row per grid point, seed and logged step; full
mode; a folder of Parquet parts, one per chunk of steps, ``store.py``), ``summary.parquet`` (per grid point, step and metric: mean and 95% intervals over seeds),
``final_policy.parquet`` (full mode: the logits and probabilities of every seed's last policy
``pi_T``) or ``final_policy_summary.parquet`` (summary mode: their statistics over seeds),
``config.json`` (the resolved config) and ``run.json`` (provenance: versions, git commit, devices,
start and wall time, command line; ``provenance.py``). It is written under a temporary name and
renamed into place, so it appears complete or not at all; the folder and its files get the
user's usual permissions (``umask``). ``load`` reads a folder back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from entropy_sim.config import Config
from entropy_sim.diagnostics.summary import quantile_name, stats_of
from entropy_sim.engine import store

Z_95 = 1.959963984540054


@dataclasses.dataclass
class Results:
    """The outcome of a run.

    Metrics row ``k`` (``step = k``) describes the policy ``pi_k`` before update ``k`` and the
    update to ``pi_{k+1}``, so the last row is ``pi_{T-1}``; the policy after the last update,
    ``pi_T``, is ``final_theta`` (the ``final_policy`` table).

    Attributes:
      config: the resolved config.
      arrays: ``{metric: [G, N, T]}`` per-seed arrays (grid point, seed, logged step) of a full-mode
        run held in memory; None when the run kept only statistics over seeds
        (``output = "summary"``) or wrote its rows to disk as it went (``rows_folder``). With
        ``on_nonfinite = "mark"`` the boolean ``nonfinite`` flags rows with a NaN or infinite
        metric.
      steps: ``[T]`` the step index of each logged step.
      swept: the swept hyperparameter values of each of the ``G`` grid points.
      final_theta: ``[G, N, S, A]`` logits after the last step.
      stats: ``{metric: {stat: [G, T]}}`` statistics over seeds, computed on the devices during
        the run, or (a full run whose rows stayed in memory) from the rows when ``summary()``
        first asks for them: the same statistics, bit for bit.
      provenance: versions, git commit, devices, start and wall time of the run
        (``provenance.collect``); ``run.json`` of the saved folder. None if unknown.
      rows_folder: the Parquet parts of a full-mode run that streamed its rows to disk (a run
        with a ``checkpoint`` folder, as every ``entropy-sim run``; ``store.py``), else None.
    """

    config: Config
    arrays: dict[str, np.ndarray] | None
    steps: np.ndarray
    swept: list[dict]
    final_theta: np.ndarray
    stats: dict | None = None
    provenance: dict | None = None
    rows_folder: Path | None = None

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per (grid point, seed, step): swept hyperparameters, ``seed``, ``step``, metrics."""
        return self.read_metrics()

    def read_metrics(self, columns=None, *, seeds=None, steps=None, where=None) -> pd.DataFrame:
        """A selection of ``metrics``: the metric ``columns`` (identifiers always come), the seed
        indices ``seeds`` and the step values ``steps`` (each a ``range``, list or slice; a slice
        ``slice(a, b)`` keeps ``a <= value < b``), and the grid points ``where`` the swept fields
        have the given values (``{"eta": 0.1}``). Rows streamed to disk are read part by part,
        so a selection of a run larger than memory fits in memory."""
        if self.arrays is None and self.rows_folder is None:
            raise ValueError('this run kept only statistics over seeds (output = "summary"); use '
                             '.summary(), or run with output = "full" for per-seed rows')
        if self.arrays is None:
            return store.read(self.rows_folder, columns, seeds=seeds, steps=steps, where=where)
        return self.select(self._frame(), columns, seeds, steps, where)

    @staticmethod
    def select(frame: pd.DataFrame, columns=None, seeds=None, steps=None, where=None):
        """The rows and columns of a metrics table ``frame`` that ``read_metrics`` selects."""
        if columns is not None:
            unknown = [c for c in columns if c not in frame.columns]
            if unknown:
                raise ValueError(f"unknown column(s) {unknown}; the run has {list(frame.columns)}")
            ids = list(frame.columns[:frame.columns.get_loc("step") + 1])
            frame = frame[ids + [c for c in columns if c not in ids]]
        keep = np.ones(len(frame), bool)
        if seeds is not None:
            keep &= store.select(frame["seed"].to_numpy(), seeds)
        if steps is not None:
            keep &= store.select(frame["step"].to_numpy(), steps)
        for name, value in (where or {}).items():
            if name not in frame.columns:
                raise ValueError(f"where: {name!r} is not a swept field of this run")
            keep &= frame[name].to_numpy() == value
        return frame if keep.all() else frame[keep].reset_index(drop=True)

    def _frame(self) -> pd.DataFrame:
        return pd.DataFrame(store.part_columns(self.arrays, self.swept, self.steps))

    def summary(self) -> pd.DataFrame:
        """Per grid point, step and metric: ``mean``, ``std``, the 95% confidence interval of the
        mean (``ci_low``, ``ci_high``; normal approximation), the quantiles over seeds of the
        config's ``quantiles`` (default ``q025``, ``median``, ``q975``), and ``n``, the seeds counted
        (those whose metrics are all finite). Includes the covariance law's error metrics
        ``cov_error``, ``cov_abs_error``, ``cov_sign_agree``. Tidy (long) format."""
        if self.stats is None:  # a full run whose rows stayed in memory: computed once, now
            self.stats = stats_of(self.arrays, tuple(self.config["quantiles"]),
                                  tuple(self.config["quantile_metrics"]), self.config["dtype"])
        return stats_frame(self.stats, self.steps, self.swept, self.config["quantiles"])

    @property
    def final_policy(self) -> pd.DataFrame:
        """The last policy ``pi_T`` of every seed: one row per (grid point, seed, state, action)
        with the swept hyperparameters, ``seed``, ``state``, ``action``, ``logit`` and ``prob``
        (``softmax`` of the state's logits), the last two in the run's dtype."""
        return final_policy_frame(self._final_theta(), self.swept)

    def final_policy_summary(self) -> pd.DataFrame:
        """Per grid point, state and action, statistics over seeds of the last policy's
        probability ``pi_T(action | state)``: ``mean``, ``std``, the config's ``quantiles``
        (default ``q025``, ``median``, ``q975``) and ``n``, the seeds counted (finite logits)."""
        return final_policy_stats(self._final_theta(), self.swept, tuple(self.config["quantiles"]))

    def _final_theta(self) -> np.ndarray:
        return np.asarray(self.final_theta, dtype=self.config["dtype"])

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write the result folder atomically: ``metrics.parquet/`` and ``final_policy.parquet``
        (full mode) or ``final_policy_summary.parquet`` (summary mode), ``summary.parquet``,
        ``config.json`` and ``run.json`` (``provenance``; versions and git only if None)."""
        return save_folder(self, out_dir, overwrite=overwrite)


def save_folder(results, out_dir, *, overwrite: bool = False) -> Path:
    """Write the result folder of ``results`` (``Results`` or ``sweeps.SweepResults``)
    atomically; see ``Results.save``."""
    from entropy_sim import provenance

    out = Path(out_dir)
    record = results.provenance if results.provenance is not None else provenance.collect()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if results.config["output"] == "full":
            write_rows(results, tmp / "metrics.parquet")
            store.write_table(results.final_policy, tmp / "final_policy.parquet")
        else:
            store.write_table(results.final_policy_summary(), tmp / "final_policy_summary.parquet")
        store.write_table(results.summary(), tmp / "summary.parquet")
        (tmp / "config.json").write_text(json.dumps(results.config.to_dict(), indent=2) + "\n")
        (tmp / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def write_rows(results, folder: Path) -> None:
    """The per-seed rows of ``results`` (``Results`` or ``sweeps.SweepResults``) as the Parquet
    parts of ``folder``: parts streamed during the run are linked, rows in memory written (one
    part per run)."""
    from entropy_sim.sweeps import SweepResults

    runs = results.runs if isinstance(results, SweepResults) else [({}, results)]
    for r, (values, res) in enumerate(runs):
        if res.rows_folder is not None:  # parts hold the static fields of a sweep already
            store.link_parts([(res.rows_folder, r)], folder)
        else:
            store.write_part(folder, (r, 0, 0), res.arrays, res.swept, res.steps, values)


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


def final_policy_frame(theta: np.ndarray, swept: list[dict]) -> pd.DataFrame:
    """The tidy table of final logits ``theta: [G, N, S, A]``: swept hyperparameters, ``seed``,
    ``state``, ``action`` (int32), ``logit`` and ``prob`` (``theta``'s dtype)."""
    num_grid, num_seeds, num_states, num_actions = theta.shape
    per_grid = num_seeds * num_states * num_actions
    cols: dict[str, np.ndarray] = {}
    for name in swept[0] if swept else ():
        cols[name] = np.repeat(np.array([p[name] for p in swept]), per_grid)
    index = np.indices((num_grid, num_seeds, num_states, num_actions), dtype=np.int32)
    cols["seed"], cols["state"], cols["action"] = (index[i].ravel() for i in (1, 2, 3))
    cols["logit"] = theta.ravel()
    cols["prob"] = softmax(theta).ravel()
    return pd.DataFrame(cols)


def final_policy_stats(theta: np.ndarray, swept: list[dict],
                       quantiles=(0.025, 0.5, 0.975)) -> pd.DataFrame:
    """Statistics over the seed axis of ``softmax(theta)``, ``theta: [G, N, S, A]``: one row per
    (grid point, state, action) with ``mean``, ``std``, the ``quantiles`` and ``n`` (seeds with
    finite logits; the others are left out), in float64."""
    num_grid, _, num_states, num_actions = theta.shape
    prob = softmax(theta).astype(np.float64)
    good = np.isfinite(theta).all(axis=-1, keepdims=True) & np.isfinite(prob)
    x = np.where(good, prob, np.nan)
    n = good.sum(axis=1).astype(np.float64)  # [G, S, A]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a grid point with no finite seed
        mean = np.nanmean(x, axis=1)
        std = np.sqrt(np.nansum((x - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1))
        qs = np.nanquantile(x, quantiles, axis=1)
    per_grid = num_states * num_actions
    cols: dict[str, np.ndarray] = {}
    for name in swept[0] if swept else ():
        cols[name] = np.repeat(np.array([p[name] for p in swept]), per_grid)
    index = np.indices((num_grid, num_states, num_actions), dtype=np.int32)
    cols["state"], cols["action"] = index[1].ravel(), index[2].ravel()
    cols.update(mean=mean.ravel(), std=std.ravel())
    cols.update({quantile_name(p): q.ravel() for p, q in zip(quantiles, qs)})
    cols["n"] = n.ravel().astype(np.int64)
    return pd.DataFrame(cols)


def softmax(theta: np.ndarray) -> np.ndarray:
    """``softmax`` over the last axis, in ``theta``'s dtype."""
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.exp(theta - theta.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)


def load(out_dir) -> "ResultFolder":
    """Read a result folder back (``ResultFolder``); unpacks as ``metrics, config = load(dir)``."""
    return ResultFolder(out_dir)


class ResultFolder:
    """A result folder written by ``Results.save`` or ``entropy-sim run``, read lazily.

    Attributes and tables (each read once, when first used):
      path: the folder.
      config: the resolved config (dict, as ``config.json``).
      provenance: ``run.json`` as a dict; None for folders written before it existed.
      metrics: ``metrics.parquet`` (a folder of Parquet parts, ``store.py``), in the order of
        ``Results.metrics``; raises ``ValueError`` for a summary-mode folder.
      read_metrics(columns, seeds=, steps=, where=): a selection of it, read part by part.
      summary(): ``summary.parquet``.
      final_policy: ``final_policy.parquet``, the last policy of every seed (full mode); raises
        ``ValueError`` for a summary-mode folder or one written before it existed.
      final_policy_summary(): ``final_policy_summary.parquet`` (summary mode), or computed from
        ``final_policy`` as ``Results.final_policy_summary`` does (full mode).

    ``metrics, config = load(dir)`` unpacks as ``load`` returned before it had the rest.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a result folder (no config.json)")
        self.config = json.loads((self.path / "config.json").read_text())
        run = self.path / "run.json"
        self.provenance = json.loads(run.read_text()) if run.is_file() else None

    def __iter__(self):
        return iter((self.metrics, self.config))

    def __getitem__(self, index):
        return (self.metrics, self.config)[index]

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        return self.read_metrics()

    def read_metrics(self, columns=None, *, seeds=None, steps=None, where=None) -> pd.DataFrame:
        """A selection of ``metrics``, read part by part; see ``Results.read_metrics``."""
        path = self.path / "metrics.parquet"
        if not path.exists():
            raise ValueError(f'{self.path} has no metrics.parquet; use .summary(); this run kept '
                             f'only statistics over seeds (output = "summary")')
        if path.is_dir():
            return store.read(path, columns, seeds=seeds, steps=steps, where=where)
        frame = pd.read_parquet(path)  # a folder written before rows were streamed
        return Results.select(frame, columns, seeds, steps, where)

    def summary(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "summary.parquet")

    @functools.cached_property
    def final_policy(self) -> pd.DataFrame:
        return pd.read_parquet(self._table("final_policy.parquet", "use .final_policy_summary() "
                                           "for a summary-mode run"))

    def final_policy_summary(self) -> pd.DataFrame:
        stored = self.path / "final_policy_summary.parquet"
        if stored.is_file():
            return pd.read_parquet(stored)
        table = self.final_policy
        swept = [c for c in table.columns if c not in ("seed", "state", "action", "logit", "prob")]
        frames = []  # one per run of a sweep over static fields (sizes may differ), else one
        keys = _run_keys(self.config)
        for _, run in table.groupby(keys, sort=False, dropna=False) if keys else [(None, table)]:
            num_seeds = int(run.seed.max()) + 1
            num_states, num_actions = int(run.state.max()) + 1, int(run.action.max()) + 1
            logits = run.logit.to_numpy().reshape(-1, num_seeds, num_states, num_actions)
            points = run[swept].iloc[::num_seeds * num_states * num_actions].to_dict("records")
            frames.append(final_policy_stats(logits, points, tuple(self.config["quantiles"])))
        return pd.concat(frames, ignore_index=True)

    def _table(self, name: str, hint: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise ValueError(f"{self.path} has no {name}; {hint}")
        return path

    def __repr__(self):
        return f"ResultFolder({str(self.path)!r})"


def _run_keys(config: dict) -> list[str]:
    """The columns that tell the runs of a sweep over static fields apart (``[]`` for one run):
    the config's ``static_sweep``."""
    from entropy_sim.config import Config
    from entropy_sim.errors import ConfigError

    try:
        return list(Config(config).static_sweep)
    except ConfigError:  # a folder of an older version, whose config no longer resolves
        return []


class atomic_dir:
    """Context manager: a temporary folder beside ``out`` renamed to ``out`` on success and
    deleted on failure, so ``out`` is complete or absent."""

    def __init__(self, out: Path, *, overwrite: bool = False):
        self.out, self.overwrite = Path(out), overwrite

    def __enter__(self) -> Path:
        check_writable(self.out, self.overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_unique_dir(self.out.parent, f".{self.out.name}.partial-")
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


def make_unique_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/prefix<random>`` with the permissions of any folder the user makes
    (``0o777`` less the umask; ``tempfile.mkdtemp`` would make it ``0o700``)."""
    while True:
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


def check_writable(out: Path, overwrite: bool) -> None:
    """Refuse to run when the result folder exists (unless ``overwrite``) or is a file."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")


_ordered = store.ordered

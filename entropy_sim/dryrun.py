"""``entropy-sim run CONFIG.toml --dry-run``: what a run would do, from its config alone.

``plan(config)`` builds nothing: no environment, no initial policy, no program. It reads
the resolved config, cuts the run into chunks and grid batches exactly as the runner will
(``runner.make_plan``, which needs only the sizes and the device count), lists the metric columns
the run logs (the per-step diagnostics traced abstractly with ``jax.eval_shape``, plus the rule's
own columns), and estimates the memory of the metrics: one chunk of per-seed values on the
devices, and the result on the host. ``DryRun.render`` prints it: the resolved config as TOML (it
runs as it is), then the plan as ``#`` comments.
"""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np

from entropy_sim.config import Config, _resolve_env
from entropy_sim.diagnostics.columns import run_columns
from entropy_sim.diagnostics.summary import DERIVED
from entropy_sim.engine.runner import make_plan
from entropy_sim.errors import ConfigError
from entropy_sim.results import _ordered
from entropy_sim.rules.registry import RULES

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class DryRun:
    """The plan of a run. Sizes: ``grid_rows`` and ``padded_seeds`` are the rows and seeds one
    compiled call holds (padding included, ``sharding.layout``); ``chunk_logged`` the logged steps
    of the longest chunk; ``columns`` the per-step metrics, each a ``dtype`` number per grid
    point, seed and logged step; ``num_states, num_actions`` the policy's shape."""

    config: Config
    sweep: dict
    grid_points: int
    logged_steps: int
    chunks: list
    grid_batches: list
    grid_rows: int
    padded_seeds: int
    seed_block: int
    mesh: tuple
    columns: list
    num_states: int
    num_actions: int

    @property
    def itemsize(self) -> int:
        return np.dtype(self.config["dtype"]).itemsize

    @property
    def chunk_lengths(self) -> list[int]:
        """The distinct chunk lengths, longest first: one compiled chunk program each."""
        return sorted({length for _, length in self.chunks}, reverse=True)

    @property
    def compiled_programs(self) -> int:
        """The initial state's program and one per chunk length; every grid batch is padded to
        the same rows, so all batches share them."""
        return 1 + len(self.chunk_lengths)

    @property
    def work_units(self) -> int:
        """Calls of a compiled chunk: grid batches x chunks."""
        return len(self.grid_batches) * len(self.chunks)

    @property
    def chunk_logged(self) -> int:
        return max(self.chunk_lengths) // self.config["log_every"]

    @property
    def summary_mode(self) -> bool:
        return self.config["output"] == "summary"

    @property
    def device_columns(self) -> int:
        """Per-seed columns of a chunk on the devices (summary mode adds the covariance law's
        three error columns there, before reducing over the seeds)."""
        return len(self.columns) + (len(DERIVED) if self.summary_mode else 0)

    @property
    def device_bytes(self) -> int:
        """The per-seed metric buffers of one chunk on the devices (in either mode)."""
        return (self.grid_rows * self.padded_seeds * self.chunk_logged * self.device_columns
                * self.itemsize)

    @property
    def rows(self) -> int:
        """Rows of the metrics table (full mode): grid points x seeds x logged steps."""
        return self.grid_points * self.config["seeds"] * self.logged_steps

    @property
    def stats_per_metric(self) -> int:
        """Summary mode: mean, std, n and one array per quantile, for every metric."""
        return 3 + len(self.config["quantiles"])

    @property
    def host_bytes(self) -> int:
        """What the result holds of the metrics: full mode ``{metric: [G, N, T]}`` (plus one
        byte per row for the ``nonfinite`` flags in mark mode); summary mode
        ``{metric: {stat: [G, T]}}`` for the metrics and the three error metrics, plus the
        non-finite counts (two int32 per grid point and step)."""
        if self.summary_mode:
            cells = self.grid_points * self.logged_steps
            return (cells * (len(self.columns) + len(DERIVED)) * self.stats_per_metric
                    * self.itemsize + cells * 2 * 4)
        flags = self.rows if self.config["on_nonfinite"] == "mark" else 0
        return self.rows * len(self.columns) * self.itemsize + flags

    @property
    def final_logits_bytes(self) -> int:
        """The final logits ``[G, N, S, A]`` the result keeps."""
        return (self.grid_points * self.config["seeds"] * self.num_states * self.num_actions
                * self.itemsize)

    def render(self) -> str:
        """The resolved config as TOML, then the plan as comments."""
        head = ["# Resolved config (every default filled in; runs as it is):"]
        return "\n".join(head + [to_toml(self.config.to_dict()), ""]
                         + [f"# {line}" for line in self.lines()])

    def lines(self) -> list[str]:
        """The plan, one line per fact."""
        cfg = self.config
        dtype, size = cfg["dtype"], self.itemsize
        grid = (" x ".join(f"{k} = {json.dumps(v)}" for k, v in self.sweep.items())
                or "nothing swept")
        lengths = ", ".join(f"{n}" for n in self.chunk_lengths)
        seeds = (f"{cfg['seeds']} (computed as {self.padded_seeds}: blocks of {self.seed_block} "
                 f"seeds; devices: {self.mesh[0]} for grid points x {self.mesh[1]} for seeds)")
        lines = [
            f"grid: {_count(self.grid_points, 'point')} ({grid})",
            f"seeds: {seeds}",
            f"steps: {cfg['steps']}, logged steps: {self.logged_steps} "
            f"(log_every = {cfg['log_every']})",
            f"chunks: {len(self.chunks)} (steps per chunk: {lengths}); grid batches: "
            f"{len(self.grid_batches)} of up to {_count(self.grid_batches[0][1], 'grid point')} "
            f"({self.grid_rows} rows per compiled call)",
            f"compiled programs: {self.compiled_programs} (the initial state + "
            f"{_count(len(self.chunk_lengths), 'chunk length')}), "
            f"chunk calls: {self.work_units} ({_count(len(self.grid_batches), 'grid batch')} x "
            f"{_count(len(self.chunks), 'chunk')})",
            f"metric columns: {len(self.columns)} ({dtype}): {', '.join(self.columns)}",
            f"device memory: {_size(self.device_bytes)} per chunk of per-seed metrics "
            f"({self.grid_rows} grid rows x {self.padded_seeds} seeds x {self.chunk_logged} "
            f"logged steps x {self.device_columns} columns x {size} B)",
        ]
        if self.summary_mode:
            lines.append(
                f"host memory: {_size(self.host_bytes)} of statistics over seeds "
                f"({_count(self.grid_points, 'grid point')} x {self.logged_steps} logged steps x "
                f"{len(self.columns) + len(DERIVED)} metrics x {self.stats_per_metric} statistics "
                f"x {size} B, + 8 B of non-finite counts per grid point and step)")
        else:
            flags = " + 1 B per row of nonfinite flags" if cfg["on_nonfinite"] == "mark" else ""
            lines.append(f"host memory: {_size(self.host_bytes)} of metrics ({self.rows} rows x "
                         f"{len(self.columns)} columns x {size} B{flags}), the size of "
                         f"metrics.parquet; entropy-sim run streams them to disk chunk by chunk "
                         f"and holds about two chunks")
        lines.append(f"final logits: {_size(self.final_logits_bytes)} ({self.grid_points} x "
                     f"{cfg['seeds']} x {self.num_states} states x {self.num_actions} actions x "
                     f"{size} B)")
        return lines


def _count(n: int, noun: str) -> str:
    """``1 chunk``, ``2 chunks``, ``2 grid batches``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('ch', 's')) else 's'}"


@dataclasses.dataclass(frozen=True)
class SweepDryRun:
    """The plan of a sweep over static fields: each run's ``DryRun`` with its swept values."""

    config: Config
    runs: list  # [(values, DryRun)]

    @property
    def compiled_programs(self) -> int:
        return sum(run.compiled_programs for _, run in self.runs)

    def render(self) -> str:
        """The resolved config as TOML (the swept static fields as lists), then each run's plan."""
        head = ["# Resolved config (every default filled in; runs as it is):"]
        sweep = " x ".join(f"{k} = {json.dumps(v)}" for k, v in self.config.static_sweep.items())
        lines = [f"runs: {len(self.runs)}, one per combination of the static fields swept "
                 f"({sweep}); up to {self.compiled_programs} compiled programs in all (runs of one "
                 f"device layout share the initial state's); the result tables have a column per "
                 f"swept field"]
        for i, (values, run) in enumerate(self.runs):
            where = ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
            lines += ["", f"run {i + 1} of {len(self.runs)}: {where}"]
            lines += [f"  {line}" for line in run.lines()]
        return "\n".join(head + [to_toml(self.config.to_dict()), ""]
                         + [f"# {line}".rstrip() for line in lines])


def plan(config: Config) -> DryRun | SweepDryRun:
    """The plan of ``config`` (see the module docstring); raises ``ConfigError`` for what only
    the run would otherwise find: more ``devices`` than there are, unknown ``quantile_metrics``.
    A sweep over static fields gets a plan per run (``SweepDryRun``)."""
    if config.static_sweep:
        return SweepDryRun(config, [(values, plan(part)) for values, part in config.runs()])
    _, swept = config.grid()
    shape = SimpleNamespace(config=config, num_grid=len(swept), num_seeds=config["seeds"])
    p = make_plan(shape)  # reads only these three attributes of an Experiment
    columns = metric_columns(config)
    if config["output"] == "summary":
        unknown = sorted(set(config["quantile_metrics"]) - set(columns) - set(DERIVED))
        if unknown:
            raise ConfigError("quantile_metrics", f"unknown metric(s) {unknown}; this run logs "
                                                  f"{sorted([*columns, *DERIVED])}")
    num_states, num_actions = _resolve_env(config.to_dict()["env"])[1].shape
    lay = p.layout
    return DryRun(config=config, sweep=config.sweep, grid_points=len(swept),
                  logged_steps=config["steps"] // config["log_every"], chunks=p.chunks,
                  grid_batches=p.grid_batches, grid_rows=lay.grid_size, padded_seeds=lay.padded,
                  seed_block=lay.block, mesh=tuple(lay.mesh.devices.shape), columns=columns,
                  num_states=num_states, num_actions=num_actions)


def metric_columns(config: Config) -> list[str]:
    """The floating-point columns a run of ``config`` logs per grid point, seed and step: the
    per-step diagnostics, the rule's closed form and extra columns, ``return_reg`` for rules with
    ``tau``, and ``pass_at_k`` where every reward is 0 or 1."""
    spec = RULES[config["algo"]["name"]]
    logged = run_columns(spec, config, binary_rewards(config.to_dict()["env"]))
    return _ordered([c.name for c in logged if c.name not in DERIVED])  # the metrics table's order


def binary_rewards(env: dict) -> bool:
    """Whether every reward of the resolved ``[env]`` table is 0 or 1 (as the runner decides
    from the built environments: MDPs never, token trees always; a kind registered in user code
    is assumed to have them, so that its plan lists every column it may log)."""
    if env["kind"] == "mdp":
        return False
    if env["kind"] == "token_tree":
        return True
    values = env.get("means", env.get("r"))
    if values is None:
        gen = env.get("generator")
        if gen is None:  # a kind registered by the user: its columns as if every reward were 0/1
            return True
        if gen in ("bernoulli", "verifiable"):
            return True
        values = [env["low"], env["high"]] if gen == "uniform" else [env["loc"]]
        if (gen == "uniform" and env["low"] != env["high"]) or (gen == "gaussian" and env["scale"]):
            return False
    return bool(np.isin(np.asarray(values, np.float64), (0.0, 1.0)).all())


def to_toml(data: dict) -> str:
    """A resolved config as TOML: top-level keys, then one ``[table]`` per table. Unset optional
    fields (None) are left out, as TOML has no null; their defaults are None again."""
    def line(key, value):
        name = key if _BARE_KEY.match(key) else json.dumps(key)
        return f"{name} = {json.dumps(value)}"

    lines = [line(k, v) for k, v in data.items() if not isinstance(v, dict) and v is not None]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [line(k, v) for k, v in table.items() if v is not None]
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"

"""The Python entry points: load or build a config, run it, get tables back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from entropy_sim import provenance
from entropy_sim.config import Config
from entropy_sim.engine import compile_cache, memory
from entropy_sim.engine.checkpoint import Checkpoint
from entropy_sim.engine.experiment import build
from entropy_sim.engine.runner import make_plan, run_arrays
from entropy_sim.results import Results
from entropy_sim.sweeps import SweepResults


def load_config(path, overrides=()) -> Config:
    """Read a TOML config and apply ``key=value`` overrides; raises ``ConfigError`` on bad input."""
    return Config.from_toml(path, overrides)


def run(config: Config | dict | str | Path, *, progress: bool = True,
        checkpoint=None) -> Results | SweepResults:
    """Run every seed at every grid point of ``config`` (a ``Config``, a dict shaped like the TOML
    file, or a path to one) and return the ``Results``. A config that sweeps static fields
    (``config.static_sweep``: lists for ``algo.name``, ``algo.group``, environment or policy
    fields, the master ``seed``) runs once per combination and returns ``SweepResults``, whose
    tables hold every run with a column per swept field (``sweeps.py``).

    ``checkpoint``: a folder that keeps the run's progress after every chunk; running the same
    config again with the same folder resumes where an interrupted run stopped (identical results).
    In full mode the per-seed rows go to that folder as the run goes (Parquet parts,
    ``store.py``), so memory holds a chunk of them, not the run: ``Results.metrics`` and
    ``Results.read_metrics`` read them from there, and ``Results.save`` links them into the
    result folder. The folder is left in place; delete it when the results are saved.

    ``Results.provenance`` records the versions, git commit, devices, start and wall time (from
    building the experiment to the last chunk: compiling included, saving not)."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = Config(config)
    if not config.static_sweep:
        return _run_one(config, progress=progress, checkpoint=checkpoint)
    start, clock = provenance.now(), time.perf_counter()
    runs = []
    for i, (values, part) in enumerate(config.runs()):
        where = None if checkpoint is None else Path(checkpoint) / f"run-{i}"
        runs.append((values, _run_one(part, progress=progress, checkpoint=where,
                                      constants=values)))
    record = {**runs[0][1].provenance, "start": start.isoformat(timespec="seconds"),
              "wall_s": round(time.perf_counter() - clock, 3),
              "resumed_units": sum(r.provenance["resumed_units"] for _, r in runs)}
    return SweepResults(config=config, runs=runs, provenance=record)


def _run_one(config: Config, *, progress: bool, checkpoint, constants=None) -> Results:
    """One compiled run (a config that sweeps no static field; ``constants``: the static fields a
    sweep set for it, columns of its streamed rows)."""
    start, clock = provenance.now(), time.perf_counter()
    memory.check(config, streamed=checkpoint is not None and config["output"] == "full")
    exp = build(config)
    plan = make_plan(exp)
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, config.to_dict(), plan, constants)
    out = run_arrays(exp, progress=progress, checkpoint=ckpt)
    wall_s = time.perf_counter() - clock
    resumed = (ckpt.resumed_from or 0) if ckpt is not None else 0
    record = provenance.collect(start=start, wall_s=wall_s, devices=plan.layout.mesh.devices.flat,
                                resumed_units=resumed,
                                compilation_cache=compile_cache.active_dir())
    steps = np.arange(0, config["steps"], config["log_every"])
    return Results(config=config, arrays=out.arrays, steps=steps, swept=exp.swept,
                   final_theta=out.final_theta, stats=out.stats, provenance=record,
                   rows_folder=out.rows_folder)

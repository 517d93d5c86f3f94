"""The Python entry points: load or build a config, run it, get tables back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from entropy_sim.config import Config
from entropy_sim.experiment import build
from entropy_sim.results import Results
from entropy_sim.runner import run_arrays


def load_config(path, overrides=()) -> Config:
    """Read a TOML config and apply ``key=value`` overrides; raises ``ConfigError`` on bad input."""
    return Config.from_toml(path, overrides)


def run(config: Config | dict | str | Path, *, progress: bool = True) -> Results:
    """Run every seed at every grid point of ``config`` (a ``Config``, a dict shaped like the TOML
    file, or a path to one) and return the ``Results``."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = Config(config)
    exp = build(config)
    arrays, state = run_arrays(exp, progress=progress)
    steps = np.arange(0, config["steps"], config["log_every"])
    return Results(config=config, arrays=arrays, steps=steps, swept=exp.swept,
                   final_theta=np.asarray(state.theta))

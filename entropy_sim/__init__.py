"""entropy_sim: exact and sampled softmax policy dynamics, and the entropy-covariance law.

    import entropy_sim as es
    results = es.run("experiments/demo.toml")
    results.metrics   # one row per grid point, seed and step
"""

from entropy_sim import _xla

_xla.configure()  # before anything starts JAX's CPU backend

from entropy_sim import (catalog, diagnostics, envs, objectives, parts, policies,  # noqa: E402
                         rules, sampling, softmax)
from entropy_sim.api import load_config, run  # noqa: E402
from entropy_sim.config import Config  # noqa: E402
from entropy_sim.engine.compile_cache import enable_compilation_cache  # noqa: E402
from entropy_sim.engine.experiment import Experiment, build  # noqa: E402
from entropy_sim.engine.runner import NonFiniteError  # noqa: E402
from entropy_sim.errors import ConfigError  # noqa: E402
from entropy_sim.results import ResultFolder, Results, load  # noqa: E402
from entropy_sim.sweeps import SweepResults  # noqa: E402

__all__ = [
    "Config", "ConfigError", "Experiment", "NonFiniteError", "ResultFolder", "Results", "build",
    "catalog", "diagnostics", "enable_compilation_cache", "envs", "load", "load_config",
    "objectives", "parts", "policies", "rules", "run", "sampling", "softmax", "SweepResults",
]
__version__ = "0.1.0"

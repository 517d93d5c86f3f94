"""entropy_sim: exact and sampled softmax policy dynamics, and the entropy-covariance law.

    import entropy_sim as es
    results = es.run("experiments/demo.toml")
    results.metrics   # one row per grid point, seed and step
"""

from entropy_sim import envs, policies, rules, softmax
from entropy_sim.api import load_config, run
from entropy_sim.config import Config
from entropy_sim.errors import ConfigError
from entropy_sim.experiment import Experiment, build
from entropy_sim.results import Results, load
from entropy_sim.runner import NonFiniteError

__all__ = [
    "Config", "ConfigError", "Experiment", "NonFiniteError", "Results", "build", "envs", "load",
    "load_config", "policies", "rules", "run", "softmax",
]
__version__ = "0.1.0"

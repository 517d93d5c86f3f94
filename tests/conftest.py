"""Shared test helpers."""

import gc
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE_VAR = "ENTROPY_SIM_COMPILATION_CACHE"


def pytest_configure(config):
    """The command line caches compiled programs in the user's cache folder; tests (in this
    process and every subprocess they start) use a scratch folder instead, removed at the end."""
    config._entropy_sim_cache = tempfile.mkdtemp(prefix="entropy-sim-test-jax-cache-")
    os.environ[CACHE_VAR] = config._entropy_sim_cache


def pytest_unconfigure(config):
    folder = getattr(config, "_entropy_sim_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session):
    """Free every compiled program before a pytest-xdist worker reports that it is done.

    The controller stops a worker that is still busy 5 s later with SIGINT; freeing thousands of
    XLA executables in pytest's final garbage collections can take that long, and the interrupt
    then lands in JAX's garbage-collection callback, a spurious warning at the end of the run."""
    if hasattr(session.config, "workerinput"):
        import jax

        from entropy_sim import experiment, runner

        for cache in (runner.compiled_chunk, runner.compiled_init, experiment._over_keys):
            cache.cache_clear()
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def root() -> Path:
    return ROOT


def small_config(**top) -> dict:
    """A tiny valid config; keyword arguments replace top-level keys or whole tables."""
    cfg = {"seed": 0, "seeds": 3, "steps": 4,
           "env": {"kind": "bandit", "means": [1.0, 0.9, 0.1]},
           "policy": {"init": "uniform"},
           "algo": {"name": "pg", "eta": 0.4}}
    cfg.update(top)
    return cfg

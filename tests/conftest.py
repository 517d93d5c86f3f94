"""Shared test helpers."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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

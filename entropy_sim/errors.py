"""The error raised for bad input, and the small numpy checks that raise it.

Every check runs on concrete (numpy) values before anything is compiled, and names the offending
field, e.g. ``env.P: rows must sum to 1; P[2, 0] sums to 0.9``.
"""

from __future__ import annotations

import math

import numpy as np


class ConfigError(ValueError):
    """Bad input. ``field`` is the dotted name of the offending field (``algo.eta``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def within(self, section: str) -> "ConfigError":
        """The same error with ``section.`` put in front of the field name."""
        return ConfigError(f"{section}.{self.field}" if self.field else section, self.message)


def as_array(field: str, value, *, ndim: int | None = None, dtype=np.float64) -> np.ndarray:
    """``value`` as a numpy array of ``ndim`` dimensions, every entry finite."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected {'a nested list of ' if ndim and ndim > 1 else ''}"
                                 f"numbers, got {_short(value)}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ConfigError(field, f"expected {ndim} dimension(s), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(field, f"must be finite; entry {list(where)} is {arr[where]}")
    return arr


def probabilities(field: str, p: np.ndarray, *, strictly_positive: bool = False,
                  atol: float = 1e-6) -> np.ndarray:
    """Check that the last axis of ``p`` is a probability vector (entries >= 0, sum 1)."""
    if (p < 0).any():
        where = tuple(int(i) for i in np.argwhere(p < 0)[0])
        raise ConfigError(field, f"probabilities must be >= 0; entry {list(where)} is {p[where]}")
    if strictly_positive and (p <= 0).any():
        where = tuple(int(i) for i in np.argwhere(p <= 0)[0])
        raise ConfigError(field, f"a softmax policy gives every action positive probability; "
                                 f"entry {list(where)} is {p[where]}")
    sums = p.sum(axis=-1)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        where = tuple(int(i) for i in np.argwhere(off)[0]) if sums.ndim else ()
        label = f" (row {list(where)})" if where else ""
        raise ConfigError(field, f"probabilities must sum to 1{label}; they sum to "
                                 f"{float(sums[where]):.6g}")
    return p


def integer(field: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(field, f"expected an integer, got {_short(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value}")
    return int(value)


def number(field: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float inside the given (open or closed) interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(field, f"expected a number, got {_short(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(field, f"must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

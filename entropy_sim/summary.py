"""Statistics over seeds, computed inside the compiled scan (``output = "summary"``).

Per grid point and step, over the seeds whose metrics are all finite: the mean, the standard
deviation, the chosen quantiles, and the count ``n``; plus the covariance law's error statistics
as three derived metrics (``cov_error = dH_realized - dH_pred_cov``, its absolute value, and
``cov_sign_agree``, 1 where predicted and realized changes have the same sign). The output's size is
independent of the number of seeds.

The sums are pairwise in a fixed order over the seed index (padded with zeros to a power of two),
built from elementwise additions only, and quantiles come from a sort: the statistics are
bitwise identical however the seeds are laid out across devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DERIVED = ("cov_error", "cov_abs_error", "cov_sign_agree")


def quantile_name(p: float) -> str:
    """Column name of quantile ``p``: ``median``, else ``q`` and the per-mille value (``q025``)."""
    if p == 0.5:
        return "median"
    text = f"{p * 1000:g}"
    return "q" + (text.zfill(3) if "." not in text else text)


def with_derived(metrics: dict) -> dict:
    """``metrics`` plus the covariance law's per-row error metrics (numpy or jax arrays)."""
    xp = jnp if isinstance(metrics["dH_realized"], jax.Array) else np
    realized, predicted = metrics["dH_realized"], metrics["dH_pred_cov"]
    error = realized - predicted
    out = dict(metrics)
    out["cov_error"] = error
    out["cov_abs_error"] = xp.abs(error)
    out["cov_sign_agree"] = (xp.sign(realized) == xp.sign(predicted)).astype(realized.dtype)
    return out


def ordered_sum(x: Array) -> Array:
    """Sum over the last axis in a fixed pairwise order: ``[..., N] -> [...]``."""
    n = x.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - n)])
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x[..., 0]


def nonfinite_rows(metrics: dict, nan_allowed=()) -> Array:
    """``[G, N]`` bool: rows where a metric (other than ``nan_allowed``) is NaN or infinite."""
    bad = None
    for name, values in metrics.items():
        if name in nan_allowed:
            continue
        b = ~jnp.isfinite(values)
        bad = b if bad is None else bad | b
    return bad


def over_seeds(metrics: dict[str, Array], real: Array, quantiles: tuple[float, ...],
               nan_allowed=()) -> dict[str, dict[str, Array]]:
    """Statistics of ``{name: [G, N]}`` over the seed axis, counting only seeds where ``real: [N]``
    and every metric but ``nan_allowed`` is finite. Returns ``{name: {stat: [G]}}`` with stats
    ``mean``, ``std`` (ddof 1; 0 for one seed), ``n`` and one entry per quantile, and
    ``{"nonfinite": {"count": [G], "first_seed": [G]}}`` (the lowest bad seed index, -1 if none)."""
    metrics = with_derived(metrics)
    bad = nonfinite_rows(metrics, nan_allowed) & real
    ok = real & ~bad
    dtype = metrics["dH_realized"].dtype
    n = ordered_sum(ok.astype(dtype))
    out = {}
    for name, x in metrics.items():
        mean = ordered_sum(jnp.where(ok, x, 0.0)) / n
        sq = ordered_sum(jnp.where(ok, (x - mean[:, None]) ** 2, 0.0))
        stats = {"mean": mean, "std": jnp.sqrt(sq / jnp.maximum(n - 1, 1)), "n": n}
        stats.update(_quantiles(x, ok, n, quantiles))
        out[name] = stats
    first = jnp.where(jnp.any(bad, axis=-1), jnp.argmax(bad, axis=-1), -1)
    out["nonfinite"] = {"count": jnp.sum(bad, axis=-1).astype(jnp.int32), "first_seed": first}
    return out


def _quantiles(x: Array, ok: Array, n: Array, quantiles) -> dict[str, Array]:
    """numpy's default (linear) quantiles over the ``ok`` entries of each row. ``[G, N] -> [G]``."""
    if not quantiles:
        return {}
    ordered = jnp.sort(jnp.where(ok, x, jnp.inf), axis=-1)
    out = {}
    for p in quantiles:
        pos = p * jnp.maximum(n - 1, 0)
        lo = jnp.floor(pos)
        lo_i = lo.astype(jnp.int32)[:, None]
        hi_i = jnp.minimum(lo_i + 1, jnp.maximum(n.astype(jnp.int32) - 1, 0)[:, None])
        a = jnp.take_along_axis(ordered, lo_i, axis=-1)[:, 0]
        b = jnp.take_along_axis(ordered, hi_i, axis=-1)[:, 0]
        out[quantile_name(p)] = jnp.where(n > 0, a + (b - a) * (pos - lo), jnp.nan)
    return out

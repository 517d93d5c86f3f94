"""Statistics over seeds, computed inside the compiled scan (``output = "summary"``).

Per grid point and step, over the seeds whose metrics are all finite: the mean, the standard
deviation, the count ``n`` and, for the chosen metrics, the chosen quantiles; plus the covariance law's error statistics
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

from entropy_sim.errors import ConfigError
from entropy_sim.parts import Column

Array = jax.Array

DERIVED_COLUMNS = (
    Column("cov_error", "dH_realized - dH_pred_cov: the covariance law's error (summaries)"),
    Column("cov_abs_error", "|dH_realized - dH_pred_cov| (summaries)"),
    Column("cov_sign_agree", "1 where predicted and realized entropy changes have the same sign "
                             "(summaries)"),
)
DERIVED = tuple(c.name for c in DERIVED_COLUMNS)


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


def ordered_sum(x: Array, axis: int = -1) -> Array:
    """Sum over ``axis`` in a fixed pairwise order (zeros appended up to a power of two, then
    contiguous halves added elementwise), the same for any padding or device layout."""
    x = jnp.moveaxis(x, axis, 0) if axis not in (0, -x.ndim) else x
    n = x.shape[0]
    width = 1 << max(n - 1, 0).bit_length()
    x = jnp.pad(x, [(0, width - n)] + [(0, 0)] * (x.ndim - 1))
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0]


def nonfinite_rows(metrics: dict, nan_allowed=()) -> Array:
    """Rows where a metric (other than ``nan_allowed``) is NaN or infinite (bool, same shape)."""
    bad = None
    for name, values in metrics.items():
        if name in nan_allowed:
            continue
        b = ~jnp.isfinite(values)
        bad = b if bad is None else bad | b
    return bad


def over_seeds(metrics: dict[str, Array], real: Array, quantiles: tuple[float, ...],
               nan_allowed=(), quantile_metrics: tuple[str, ...] = ()) -> dict[str, dict[str, Array]]:
    """Statistics of ``{name: [G, N, T]}`` over the seed axis, counting only seeds where
    ``real: [N]`` and every metric but ``nan_allowed`` is finite. Returns ``{name: {stat: [G, T]}}``
    with stats ``mean``, ``std`` (ddof 1; 0 for one seed), ``n`` and, for the
    ``quantile_metrics``, one entry per quantile (NaN for the others: a sort over the seeds per
    metric and step is the costliest part of a summary), and
    ``{"nonfinite": {"count": [G, T], "first_seed": [G, T]}}`` (lowest bad seed index, -1 if none)."""
    metrics = with_derived(metrics)
    unknown = sorted(set(quantile_metrics) - set(metrics))
    if unknown:
        raise ConfigError("quantile_metrics", f"unknown metric(s) {unknown}; this run logs "
                                              f"{sorted(metrics)}")
    real = real[None, :, None]
    bad = nonfinite_rows(metrics, nan_allowed) & real
    ok = real & ~bad
    dtype = metrics["dH_realized"].dtype
    n = ordered_sum(ok.astype(dtype), axis=1)
    # Every metric at once: one stacked array [C, G, N, T] (elementwise the same arithmetic as
    # metric by metric, so the same bits) compiles to a handful of operations, not C times as many.
    names = list(metrics)
    x = jnp.stack([metrics[k].astype(dtype) for k in names])
    mean = ordered_sum(jnp.where(ok, x, 0.0), axis=2) / n
    sq = ordered_sum(jnp.where(ok, (x - mean[:, :, None]) ** 2, 0.0), axis=2)
    std = jnp.sqrt(sq / jnp.maximum(n - 1, 1))
    picked = [i for i, k in enumerate(names) if k in quantile_metrics]
    qs = _quantiles(x[jnp.asarray(picked)], ok, n, quantiles) if picked else {}
    out = {}
    for i, name in enumerate(names):
        stats = {"mean": mean[i], "std": std[i], "n": n}
        if i in picked:
            stats.update({q: v[picked.index(i)] for q, v in qs.items()})
        else:
            stats.update({quantile_name(p): jnp.full_like(mean[i], jnp.nan) for p in quantiles})
        out[name] = stats
    first = jnp.where(jnp.any(bad, axis=1), jnp.argmax(bad, axis=1), -1).astype(jnp.int32)
    out["nonfinite"] = {"count": jnp.sum(bad, axis=1).astype(jnp.int32), "first_seed": first}
    return out


def _quantiles(x: Array, ok: Array, n: Array, quantiles) -> dict[str, Array]:
    """numpy's default (linear) quantiles over the ``ok`` seeds. ``[C, G, N, T] -> [C, G, T]``
    (``ok: [G, N, T]``, ``n: [G, T]``).

    The sort runs over the last axis on integer keys (``sort_keys``): a plain integer sort,
    which XLA runs as a radix sort on GPUs, where a float sort along the seed axis of ``[G, N, T]``
    ran as a strided bitonic sort (benchmarks/accelerator.py). The sorted values are those of a
    float sort (``+0`` and ``-0`` may swap places, which cannot change an interpolated quantile)."""
    if not quantiles:
        return {}
    keys = sort_keys(jnp.where(ok, x, jnp.inf))
    ordered = from_sort_keys(jnp.sort(jnp.swapaxes(keys, -2, -1), axis=-1), x.dtype)  # [C, G, T, N]
    out = {}
    for p in quantiles:
        pos = p * jnp.maximum(n - 1, 0)
        lo = jnp.floor(pos)
        lo_i = jnp.broadcast_to(lo.astype(jnp.int32)[..., None], ordered.shape[:-1] + (1,))
        hi_i = jnp.minimum(lo_i + 1, jnp.maximum(n.astype(jnp.int32) - 1, 0)[..., None])
        a = jnp.take_along_axis(ordered, lo_i, axis=-1)[..., 0]
        b = jnp.take_along_axis(ordered, hi_i, axis=-1)[..., 0]
        out[quantile_name(p)] = jnp.where(n > 0, a + (b - a) * (pos - lo), jnp.nan)
    return out


def sort_keys(x: Array) -> Array:
    """Signed integers that order as the floats ``x`` do (``-0`` just below ``+0``; no NaN):
    the float's bits, with the magnitude bits flipped for negative numbers. Same shape."""
    bits = jax.lax.bitcast_convert_type(x, _int_of(x.dtype))
    sign_fill = jax.lax.shift_right_arithmetic(bits, jnp.asarray(bits.dtype.itemsize * 8 - 1,
                                                                  bits.dtype))
    return bits ^ (sign_fill & jnp.asarray(jnp.iinfo(bits.dtype).max, bits.dtype))


def from_sort_keys(keys: Array, dtype) -> Array:
    """The inverse of ``sort_keys``."""
    return jax.lax.bitcast_convert_type(sort_keys(jax.lax.bitcast_convert_type(keys, dtype)), dtype)


def _int_of(dtype):
    return {4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]

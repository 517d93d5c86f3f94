"""Statistics over seeds, computed inside the compiled scan (``output = "summary"``).

Per grid point and step, over the seeds whose metrics are all finite: the mean, the standard
deviation, the count ``n`` and, for the chosen metrics, the chosen quantiles; plus the covariance law's error statistics
as three derived metrics (``cov_error = dH_realized - dH_pred_cov``, its absolute value, and
``cov_sign_agree``, 1 where predicted and realized changes have the same sign). The output's size is
independent of the number of seeds.

The sums run in a fixed order over the seed index (runs of 16 seeds, then pairwise;
``ordered_sum``), built from elementwise additions only, and quantiles come from a sort: the statistics are
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
    """``metrics`` plus the covariance law's per-row error metrics (numpy or jax arrays; as it
    is without the law's columns, as in the benchmarks' cut-down steps)."""
    if "dH_realized" not in metrics or "dH_pred_cov" not in metrics:
        return dict(metrics)
    xp = jnp if isinstance(metrics["dH_realized"], jax.Array) else np
    realized, predicted = metrics["dH_realized"], metrics["dH_pred_cov"]
    error = realized - predicted
    out = dict(metrics)
    out["cov_error"] = error
    out["cov_abs_error"] = xp.abs(error)
    out["cov_sign_agree"] = (xp.sign(realized) == xp.sign(predicted)).astype(realized.dtype)
    return out


LEAF = 16  # consecutive seeds added left to right before the pairwise tree


def ordered_sum(x: Array, axis: int = -1) -> Array:
    """Sum over ``axis`` in a fixed order that depends only on its length: zeros appended up to a
    multiple of ``LEAF``, each run of ``LEAF`` consecutive entries added left to right, then the
    partial sums, padded with zeros to a power of two, added pairwise (the first half plus the
    second), all with elementwise additions: the same bits for any zeros appended to ``x`` (the
    padding seeds) and any device layout.

    The first stage reads the input once in one fused loop; the tree then works on a sixteenth
    of it (a tree over the whole axis, padded to a power of two, cost 10x more on a CPU)."""
    axis = axis % x.ndim
    n = x.shape[axis]
    width = -(-max(n, 1) // LEAF)
    if width * LEAF != n:
        x = jnp.pad(x, [(0, 0)] * axis + [(0, width * LEAF - n)] + [(0, 0)] * (x.ndim - axis - 1))
    y = x.reshape(x.shape[:axis] + (width, LEAF) + x.shape[axis + 1:])
    s = jax.lax.index_in_dim(y, 0, axis + 1, keepdims=False)
    for j in range(1, LEAF):
        s = s + jax.lax.index_in_dim(y, j, axis + 1, keepdims=False)
    # Partial sums padded with zeros to a power of two: zeros appended to x (padding seeds)
    # then change no partial sum and no pairing, so the bits do not depend on them.
    full = 1 << max(width - 1, 0).bit_length()
    if full != width:
        s = jnp.pad(s, [(0, 0)] * axis + [(0, full - width)] + [(0, 0)] * (s.ndim - axis - 1))
    while s.shape[axis] > 1:
        half = s.shape[axis] // 2
        s = (jax.lax.slice_in_dim(s, 0, half, axis=axis)
             + jax.lax.slice_in_dim(s, half, 2 * half, axis=axis))
    return jax.lax.index_in_dim(s, 0, axis, keepdims=False)


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
               nan_allowed=(), quantile_metrics: tuple[str, ...] = (),
               mask_bad: bool = True) -> dict[str, dict[str, Array]]:
    """Statistics of ``{name: [G, N, T]}`` over the seed axis, counting only seeds where
    ``real: [N]`` and every metric but ``nan_allowed`` is finite. Returns ``{name: {stat: [G, T]}}``
    with stats ``mean``, ``std`` (ddof 1; 0 for one seed), ``n`` and, for the
    ``quantile_metrics``, one entry per quantile (NaN for the others: a sort over the seeds per
    metric and step is the costliest part of a summary), and
    ``{"nonfinite": {"count": [G, T], "first_seed": [G, T]}}`` (lowest bad seed index, -1 if none).

    ``mask_bad=False``: the statistics count every ``real`` seed, finite or not, for a caller
    that stops at the first non-finite row (``on_nonfinite = "error"``) and so reads only the
    ``nonfinite`` counts when there is one. It compiles one path instead of two."""
    metrics = with_derived(metrics)
    unknown = sorted(set(quantile_metrics) - set(metrics))
    if unknown:
        raise ConfigError("quantile_metrics", f"unknown metric(s) {unknown}; this run logs "
                                              f"{sorted(metrics)}")
    real = jnp.broadcast_to(real[None, :, None], next(iter(metrics.values())).shape)
    bad = nonfinite_rows(metrics, nan_allowed) & real

    def counts():
        first = jnp.where(jnp.any(bad, axis=1), jnp.argmax(bad, axis=1), -1).astype(jnp.int32)
        return {"count": jnp.sum(bad, axis=1).astype(jnp.int32), "first_seed": first}

    def flagged():
        return {**_stats(metrics, real & ~bad, quantiles, quantile_metrics),
                "nonfinite": counts()}

    def clean():
        zero = jnp.zeros(bad.shape[::2], jnp.int32)
        return {**_stats(metrics, real, quantiles, quantile_metrics),
                "nonfinite": {"count": zero, "first_seed": zero - 1}}

    if not mask_bad:
        return {**_stats(metrics, real, quantiles, quantile_metrics), "nonfinite": counts()}
    # Without a non-finite row (the usual case) only the padding seeds are masked, which XLA:CPU
    # runs several times faster; the arithmetic is the same, so are the bits.
    return jax.lax.cond(jnp.any(bad), flagged, clean)


def _stats(metrics: dict[str, Array], ok: Array, quantiles, quantile_metrics) -> dict:
    """``{name: {stat: [G, T]}}`` over the seeds where ``ok: [G, N, T]``; see ``over_seeds``.
    Metric by metric: stacking them first costs a copy of them all, more than the sums."""
    dtype = next(iter(metrics.values())).dtype
    n = ordered_sum(ok.astype(dtype), axis=1)
    out = {name: {**_mean_std(values.astype(dtype), ok, n), "n": n}
           for name, values in metrics.items()}
    picked = [k for k in metrics if k in quantile_metrics]
    if picked:
        x = jnp.stack([metrics[k].astype(dtype) for k in picked])
        qs = _quantiles(x, ok, n, quantiles)
        for i, name in enumerate(picked):
            out[name].update({q: v[i] for q, v in qs.items()})
    for name in metrics:
        if name not in picked:
            out[name].update({quantile_name(p): jnp.full_like(n, jnp.nan) for p in quantiles})
    return out


@jax.jit  # traced once for all metrics of a shape (inlined by XLA)
def _mean_std(x: Array, ok: Array, n: Array) -> dict[str, Array]:
    """Mean and standard deviation (ddof 1) over axis 1 of ``x: [G, N, T]`` where ``ok``."""
    mean = ordered_sum(jnp.where(ok, x, 0.0), axis=1) / n
    sq = ordered_sum(jnp.where(ok, (x - mean[:, None]) ** 2, 0.0), axis=1)
    return {"mean": mean, "std": jnp.sqrt(sq / jnp.maximum(n - 1, 1))}


def stats_of(rows: dict, quantiles: tuple[float, ...], quantile_metrics: tuple[str, ...],
             dtype: str) -> dict:
    """``over_seeds`` of per-seed rows held on the host, ``{name: [G, N, T]}`` (``nonfinite``
    flags ignored: the rows are checked again), as host arrays: the statistics a run computes on
    its devices chunk by chunk, with the same bits (each step's are computed alone)."""
    from entropy_sim.diagnostics import NAN_ALLOWED
    from entropy_sim.engine.experiment import precision

    metrics = {k: v for k, v in rows.items() if k != "nonfinite"}
    # Rows known to be finite need no mask: one path compiled instead of two.
    finite = all(np.isfinite(v).all() for k, v in with_derived(metrics).items()
                 if k not in NAN_ALLOWED)
    with precision(dtype):
        real = np.ones(next(iter(metrics.values())).shape[1], bool)
        out = _over_seeds_jit(metrics, real, tuple(quantiles), NAN_ALLOWED,
                              tuple(quantile_metrics), not finite)
        return jax.tree.map(np.asarray, jax.device_get(out))


_over_seeds_jit = jax.jit(over_seeds, static_argnums=(2, 3, 4, 5))


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

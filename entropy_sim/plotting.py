"""Figures: a shared style and the standard plots of a result folder.

Style: Okabe-Ito colour-blind-safe palette, readable font sizes, bands (not spaghetti) for the
spread over seeds, labelled axes with units (nats for entropy).
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import matplotlib
import matplotlib.figure
import matplotlib.pyplot as plt  # without a display, matplotlib picks its Agg backend itself
import numpy as np
import pandas as pd
from matplotlib.ticker import ScalarFormatter

from entropy_sim.results import load

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "figure.dpi": 110,
    "savefig.dpi": 150, "savefig.bbox": "tight", "lines.linewidth": 1.6,
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
}

LABELS = {
    "entropy": "entropy H(π) [nats]",
    "dH_realized": "realized ΔH [nats]",
    "dH_pred_cov": "predicted ΔH = −Cov(log π, Δz) [nats]",
    "return": "return J(π)",
    "step": "step",
}


def style():
    """``with style(): ...`` applies the shared matplotlib style."""
    return plt.rc_context(STYLE)


def grid_label(row: pd.Series | dict, keys) -> str:
    """``name=aepo, eta=0.1``: the swept values of a grid point (a field its run lacks, NaN, is
    left out)."""
    def text(value) -> str:
        return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)

    return ", ".join(f"{k}={text(row[k])}" for k in keys if not _missing(row[k])) or "all seeds"


def _missing(value) -> bool:
    return isinstance(value, (float, np.floating)) and np.isnan(value)


def band_plot(ax, summary: pd.DataFrame, metric: str, keys, *, band: str = "quantile") -> str:
    """Mean over seeds against step, one line per grid point, with the 2.5-97.5% band over seeds
    (``band="quantile"``) or the 95% confidence interval of the mean (``band="ci"``, also where the
    summary has no such quantiles of ``metric``). Returns the band drawn, for a title."""
    sub = summary[summary.metric == metric]
    groups = sub.groupby(list(keys), sort=False, dropna=False) if keys else [((), sub)]
    quantiles = (band == "quantile" and {"q025", "q975"} <= set(summary.columns)
                 and bool(sub[["q025", "q975"]].notna().all().all()))
    lo, hi = ("q025", "q975") if quantiles else ("ci_low", "ci_high")  # CI if other quantiles
    for i, (_, g) in enumerate(groups):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        ax.plot(g.step, g["mean"], color=colour, label=grid_label(g.iloc[0], keys))
        ax.fill_between(g.step, g[lo], g[hi], color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel(LABELS["step"])
    ax.set_ylabel(LABELS.get(metric, metric))
    return "95% of seeds" if quantiles else "95% CI of the mean"


def law_plot(ax, metrics: pd.DataFrame, keys, *, max_points: int = 20000, seed: int = 0):
    """Predicted against realized entropy change, one colour per grid point, with ``y = x``."""
    rng = np.random.default_rng(seed)
    sample = metrics if len(metrics) <= max_points else metrics.iloc[
        np.sort(rng.choice(len(metrics), max_points, replace=False))]
    groups = sample.groupby(list(keys), sort=False, dropna=False) if keys else [((), sample)]
    for i, (_, g) in enumerate(groups):
        ax.scatter(g.dH_pred_cov, g.dH_realized, s=4, alpha=0.5, color=OKABE_ITO[i % len(OKABE_ITO)],
                   label=grid_label(g.iloc[0], keys), rasterized=True)
    lims = [min(sample.dH_pred_cov.min(), sample.dH_realized.min()),
            max(sample.dH_pred_cov.max(), sample.dH_realized.max())]
    ax.plot(lims, lims, color="0.3", linewidth=1, linestyle="--", label="y = x")
    corr = np.corrcoef(metrics.dH_pred_cov, metrics.dH_realized)[0, 1]
    ax.set_title(f"covariance law: corr = {corr:.4f}")
    ax.set_xlabel(LABELS["dH_pred_cov"])
    ax.set_ylabel(LABELS["dH_realized"])


def grid_columns(summary: pd.DataFrame) -> list[str]:
    """The columns of a summary table that tell its grid points apart: the swept fields, static
    and traced, which come before ``step``."""
    columns = list(summary.columns)
    return columns[:columns.index("step")]


def _title(config: dict) -> str:
    """The config's ``name``, else ``RULE on KIND`` (``grpo, aepo on token_tree`` for a sweep)."""
    return config.get("name") or f"{_words(config['algo']['name'])} on {_words(config['env']['kind'])}"


def _words(value) -> str:
    """A swept field's values (``grpo, aepo``) or its value."""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def plot_results(out_dir, *, fmt: str = "png", metrics=None) -> list[Path]:
    """Render the standard figure of a result folder into ``out_dir/figures/``: entropy and
    return over training (mean and 2.5-97.5% band over seeds) and predicted against realized
    entropy change, ``figures/overview.fmt``. With ``metrics`` (names of the folder's summary),
    one panel per metric instead, into ``figures/NAME-NAME.fmt``; an unknown name raises
    ``ConfigError`` listing the folder's metrics. Returns the written paths."""
    out = Path(out_dir)
    fig = figure(out, metrics=metrics)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    path = figures / f"{'-'.join(metrics) if metrics else 'overview'}.{fmt}"
    fig.savefig(path, dpi=STYLE["savefig.dpi"], bbox_inches="tight")
    plt.close(fig)
    return [path]


def figure(out_dir, *, metrics=None) -> matplotlib.figure.Figure:
    """The figure ``plot_results`` saves, as a matplotlib figure to show or change (in a
    notebook it shows itself; pyplot holds it until ``plt.close(fig)``). ``metrics``: one panel
    per named metric of the folder's summary instead of the standard three. Linear axes count
    in a power of ten their label states where needed (``PowerInLabel``), worked out again at
    each draw."""
    out = Path(out_dir)
    if not (out / "summary.parquet").exists():
        raise FileNotFoundError(f"{out} is not a result folder (no summary.parquet)")
    config = json.loads((out / "config.json").read_text())
    summary = pd.read_parquet(out / "summary.parquet")
    with style():
        if metrics:
            fig = _metrics_figure(config, summary, list(metrics))
        else:
            fig = _overview_figure(out, config, summary)
        seeds = config["seeds"]
        fig.suptitle(f"{_title(config)}  ({_words(seeds)} seed{'' if seeds == 1 else 's'})")
        _powers_into_labels(fig)
    return fig


def _overview_figure(out: Path, config: dict, summary: pd.DataFrame):
    """Entropy, return and the covariance law (every row of a full folder, else its error)."""
    full = (out / "metrics.parquet").exists()  # a summary-mode folder has no per-seed rows
    keys = grid_columns(summary)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    band_plot(axes[0], summary, "entropy", keys)
    axes[0].set_title("entropy (mean, 95% of seeds)")
    band_plot(axes[1], summary, "return", keys)
    axes[1].set_title("return (mean, 95% of seeds)")
    if full:
        law_plot(axes[2], load(out).read_metrics(["dH_pred_cov", "dH_realized"]), keys)
    else:
        band_plot(axes[2], summary, "cov_abs_error", keys)
        axes[2].set_yscale("log")
        axes[2].set_ylabel("|realized − predicted ΔH| [nats]")
        axes[2].set_title("covariance law: error (mean, 95% of seeds)")
    axes[0].legend(frameon=False)
    return fig


def _metrics_figure(config: dict, summary: pd.DataFrame, metrics: list[str]):
    """One panel per metric (mean and band over seeds, one line per grid point)."""
    from entropy_sim.errors import ConfigError

    available = list(dict.fromkeys(summary.metric))
    for name in metrics:
        if name not in available:
            hint = difflib.get_close_matches(name, available, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError("--metrics", f"unknown metric {name!r}{guess}; this folder has: "
                                           f"{', '.join(available)}")
    keys = grid_columns(summary)
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, metrics):
        band = band_plot(ax, summary, name, keys)
        ax.set_title(f"{name} (mean, {band})")
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend(frameon=False)
    return fig


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PowerInLabel(ScalarFormatter):
    """Tick labels of plain numbers, with no offset added; on an axis whose values reach
    beyond 10⁻³ to 10⁵, in units of a power of ten that the axis label states
    (``kl (×10⁻⁶)``, ``realized ΔH [10⁻⁴ nats]``). matplotlib's defaults print long labels
    (``-0.0004``), which collide on a narrow axis, and the power above the axis, over the
    panel's title. Worked out whenever the ticks are (at each draw), so later limits or a new
    label are followed; decimals from the tick spacing, as ``ScalarFormatter``'s."""

    def __init__(self):
        super().__init__(useOffset=False)
        self.set_scientific(False)
        self.unit = 1.0
        self._suffixed = None  # (label as the caller set it, label with the power)

    def set_locs(self, locs):
        lo, hi = self.axis.get_view_interval()
        largest = max(abs(lo), abs(hi))
        power = math.floor(math.log10(largest)) if np.isfinite(largest) and largest else 0
        power = 0 if -3 <= power <= 4 else power
        self.unit = 10.0 ** power
        super().set_locs(np.asarray(locs, float) / self.unit)
        label = self.axis.get_label_text()
        if self._suffixed is not None and label == self._suffixed[1]:
            label = self._suffixed[0]  # the caller's label, before the power was added
        self._suffixed = (label, with_power(label, power))
        if self.axis.get_label_text() != self._suffixed[1]:  # unchanged: not stale, no redraw
            self.axis.set_label_text(self._suffixed[1])

    def __call__(self, x, pos=None):
        return super().__call__(x / self.unit, pos)


def with_power(label: str, power: int) -> str:
    """``label`` of an axis counting in ``10**power``: the power goes in front of the unit
    (``entropy [nats]`` -> ``entropy [10⁻⁴ nats]``), else after the label (``kl (×10⁻⁶)``)."""
    if power == 0:
        return label
    tens = f"10{str(power).translate(_SUPERSCRIPT)}"
    if label.endswith("]") and "[" in label:
        head, unit = label[:-1].rsplit("[", 1)
        return f"{head}[{tens} {unit}]"
    return f"{label} (×{tens})" if label else f"×{tens}"


def _powers_into_labels(fig) -> None:
    """``PowerInLabel`` on every linear axis of ``fig`` (log axes keep theirs)."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), ScalarFormatter):
                axis.set_major_formatter(PowerInLabel())

"""The run loop: a jitted chunk of steps, run block of seeds by block of seeds on every device.

Layout of every batched array: ``[G, N, ...]`` (grid point, seed). One compiled chunk function
serves any hyperparameter values (they are traced arrays) and any chunk offset (the first step is
a traced argument), so a run compiles once per chunk length. Inside a chunk each block of
``seed_block`` seeds of each grid point runs a ``lax.scan`` over the steps (``sharding.blockwise``),
so a seed's numbers do not depend on the number of seeds, devices or grid points. Long runs go
chunk by chunk: memory holds one chunk of metrics, a progress bar advances per chunk, and the result
does not depend on the chunk size because the samples of step ``t`` use ``fold_in(seed key, t)``.
After each chunk a second program (``compiled_stats``) reduces its metrics over the seeds on the
devices (``summary.over_seeds``); in summary mode only those statistics leave them. A full run
whose rows stay in memory (no progress folder) computes the same statistics from them when asked.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from entropy_sim import prng
from entropy_sim.diagnostics import (NAN_ALLOWED, improvement, pass_at_k, second_order,
                                     step_metrics, summary)
from entropy_sim.diagnostics.columns import run_columns
from entropy_sim.engine import sharding, store
from entropy_sim.engine.experiment import Experiment, precision
from entropy_sim.envs.base import Evaluation
from entropy_sim.optim import make_optimizer
from entropy_sim.rules.registry import RULES

Array = jax.Array

# Target size of the metrics of one chunk on a CPU (they live in host memory there).
CHUNK_BYTES = 256 * 2 ** 20
# On an accelerator, the share of each device's memory a chunk's metrics may take.
ACCELERATOR_CHUNK_SHARE = 16


class RunState(NamedTuple):
    """The carry of one seed at one grid point."""

    theta: Array     # [S, A] logits of pi_k
    opt_state: Any   # the rule's carried state: optax's, and a reference or coefficients if any
    ev: Evaluation   # exact evaluation of pi_k, reused as pi_{k+1}'s is computed once per step
    key: Array       # [2] this seed's key for update samples


class NonFiniteError(FloatingPointError):
    """A logit or metric became NaN or infinite; names where it happened."""


def init_state(theta: Array, env, hp: dict, key: Array, *, rule: str, opt_name: str) -> RunState:
    """The carry before step 0 (unbatched)."""
    opt = make_optimizer(opt_name, hp)
    init = RULES[rule].init
    carried = opt.init(theta) if init is None else init(theta, hp, opt)
    return RunState(theta, carried, env.evaluate(theta, hp.get("tau", 0.0)), key)


def step(state: RunState, env, hp: dict, t: Array, *, rule: str, opt_name: str,
         pass_at: tuple[int, ...], options: tuple = (),
         diagnostics: tuple[str, ...] = ()) -> tuple[RunState, dict[str, Array]]:
    """One update ``pi_t -> pi_{t+1}`` of one seed at one grid point, and its diagnostics row
    (with the optional column groups named in ``diagnostics``)."""
    opt = make_optimizer(opt_name, hp)
    tau = hp.get("tau", 0.0)
    theta_next, opt_state, info = RULES[rule].fn(
        state.theta, state.opt_state, state.ev, env, hp, prng.fold_in(state.key, t), opt,
        **dict(options))
    ev_next = env.evaluate(theta_next, tau)
    metrics = step_metrics(state.ev, ev_next, theta_next - state.theta)
    metrics.update(info)
    # The T4 closed forms (docs/theory.md §3.4) describe the plain gradient step only.
    if opt_name != "sgd":
        metrics["dH_pred_closed"] = jnp.full_like(metrics["dH_pred_closed"], jnp.nan)
    if "tau" in hp:
        metrics["return_reg"] = state.ev.ret_reg
    if pass_at:
        metrics.update(pass_at_k(state.ev.success, env.prompt_weights(), pass_at))
    if "improvement" in diagnostics:  # on the unregularised values
        plain, plain_next = ((state.ev, ev_next) if "tau" not in hp else
                             (env.evaluate(state.theta, 0.0), env.evaluate(theta_next, 0.0)))
        metrics.update(improvement(plain, plain_next, env.horizon, metrics["kl"]))
    if "second_order" in diagnostics:
        metrics.update(second_order(state.ev, theta_next - state.theta, metrics["dH_pred_cov"],
                                    metrics["kl_quad"]))
    return RunState(theta_next, opt_state, ev_next, state.key), metrics


def _per_seed(fn, env_per_seed: bool):
    """``fn(state, env, hp, t)`` vmapped over a block of seeds (``hp`` and ``t`` shared)."""
    return jax.vmap(fn, in_axes=(0, 0 if env_per_seed else None, None, None))


@functools.lru_cache(maxsize=None)
def compiled_init(rule: str, opt_name: str, env_per_seed: bool, lay: sharding.Layout):
    """``(theta0 [N,S,A], env, hp [G], keys [N,2], trips) -> RunState [G, N, ...]``, jitted."""
    def one(start, env, hp, t):
        theta, key = start
        return init_state(theta, env, hp, key, rule=rule, opt_name=opt_name)

    blocked = sharding.blockwise(_per_seed(one, env_per_seed), lay, env_per_seed)

    def init(theta0, env, hp, keys, trips):
        num_grid = jax.tree.leaves(hp)[0].shape[0]
        start = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_grid,) + x.shape), (theta0, keys))
        return blocked(start, env, hp, jnp.zeros((), jnp.int32), trips)

    return jax.jit(init)


@functools.lru_cache(maxsize=None)
def compiled_chunk(rule: str, opt_name: str, pass_at: tuple[int, ...], env_per_seed: bool,
                   length: int, log_every: int, options: tuple, lay: sharding.Layout,
                   diagnostics: tuple[str, ...] = ()):
    """The jitted chunk ``(state, env, hp, t0, trips) -> (state, out)``: ``length`` steps from
    step ``t0``, logging every ``log_every``-th; ``out`` is ``{name: [G, N, length // log_every]}``
    (left on the devices: ``compiled_stats`` reduces it over the seeds there).
    ``options``: the rule's static options as sorted ``(name, value)`` pairs; ``lay``: the
    device layout and seed block size (``sharding.py``); ``diagnostics``: the optional column
    groups (``diagnostics.DIAGNOSTICS``)."""
    one = functools.partial(step, rule=rule, opt_name=opt_name, pass_at=pass_at, options=options,
                            diagnostics=diagnostics)
    per_seed = _per_seed(one, env_per_seed)
    times = lambda t0: t0 + log_every * jnp.arange(length // log_every)  # noqa: E731

    def strided(advance, state, t):
        """Step ``t`` and its metrics, then the rest of the stride (metrics unused: dead code)."""
        state, metrics = advance(state, t)
        if log_every > 1:  # (a loop of no trips would still be traced)
            state = jax.lax.fori_loop(1, log_every, lambda i, s: advance(s, t + i)[0], state)
        return state, metrics

    def block_chunk(state, env, hp, t0):
        advance = lambda s, t: per_seed(s, env, hp, t)  # noqa: E731
        state, out = jax.lax.scan(functools.partial(strided, advance), state, times(t0))
        return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), out)

    # Each block of seeds runs the whole chunk (one loop trip per block and chunk).
    blocked = sharding.blockwise(block_chunk, lay, env_per_seed)

    def chunk(state, env, hp, t0, trips):
        return blocked(state, env, hp, t0, trips)  # {name: [G, N, T]}

    return jax.jit(chunk, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def compiled_stats(quantiles: tuple, lay: sharding.Layout, grid_rows: int, mask_bad: bool):
    """The jitted statistics over seeds ``(out, real) -> {name: {stat: [G, T]}}`` of a chunk's
    per-seed metrics ``out: {name: [G, N, T]}`` on the devices, over the seeds where
    ``real: [N]`` (``summary.over_seeds`` with ``quantiles = (probabilities, metrics)``), in
    summary mode and in full mode with a progress folder. A program of its own, not part of the
    chunk's: it depends only on the columns and their shapes, so runs of any rule with the same
    columns share it (compiled once). ``mask_bad``: leave the non-finite rows out of the
    statistics (mark mode); a run that stops at the first one reads only their counts."""
    by_step = NamedSharding(lay.mesh, P(None, None, ("grid", "seeds")))

    def stats(out, real):
        # Every seed of a (grid point, step) goes to one device: the steps are split instead.
        split = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x[:grid_rows], by_step),
                             out)
        real_all = jax.lax.with_sharding_constraint(real, NamedSharding(lay.mesh, P()))
        return summary.over_seeds(split, real_all, quantiles[0], NAN_ALLOWED, quantiles[1],
                                  mask_bad)

    return jax.jit(stats)


@functools.lru_cache(maxsize=None)
def compiled_cut(count: int, seeds: int):
    """The jitted cut of a unit's outputs to its ``count`` real grid points, and the per-seed
    rows (key ``"seeds"``) to the ``seeds`` real seeds, on the devices: the padding never crosses
    to the host. One program per unit rather than one eager slice per column."""

    def cut(wanted):
        return {k: jax.tree.map(lambda x: x[:count, :seeds] if k == "seeds" else x[:count], v)
                for k, v in wanted.items()}

    return jax.jit(cut)


def clear_compiled() -> None:
    """Drop every compiled program entropy_sim and JAX hold in this process (the next run
    compiles anew). A long session of unrelated runs (``python -m experiments all``) calls it
    between experiments, so memory holds one experiment's programs, not every one's."""
    from entropy_sim.engine import experiment

    for cache in (compiled_chunk, compiled_stats, compiled_cut, compiled_init,
                  experiment._over_keys):
        cache.cache_clear()
    jax.clear_caches()
    gc.collect()
    release_host_memory()


def release_host_memory() -> None:
    """Hand the host memory that is free but still held by the C allocator back to the system
    (glibc's ``malloc_trim``; nothing elsewhere). glibc keeps freed arrays and executables in its
    heaps, so without it a process's resident memory only grows from one run to the next: a test
    worker that ran ``tests/test_envs.py`` held 1.2 GB after freeing everything, 0.4 GB after the
    trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl, Windows)
        pass


def chunk_budget(lay: sharding.Layout) -> int:
    """Bytes of per-seed metrics one chunk may hold: ``CHUNK_BYTES`` on a CPU; on accelerators
    ``1 / ACCELERATOR_CHUNK_SHARE`` of each device's memory (summed over the mesh), so a GPU runs
    long chunks (few host round trips) where a CPU keeps them small."""
    devices = lay.mesh.devices.ravel()
    if devices[0].platform == "cpu":
        return CHUNK_BYTES
    try:
        limit = min(d.memory_stats()["bytes_limit"] for d in devices)
    except (KeyError, TypeError, AttributeError, RuntimeError):  # no memory statistics
        return CHUNK_BYTES
    return max(CHUNK_BYTES, len(devices) * (limit // ACCELERATOR_CHUNK_SHARE))


def plan_chunks(steps: int, log_every: int, chunk_steps: int, bytes_per_step: int,
                budget_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """``[(first step, length)]`` covering ``steps``; lengths are multiples of ``log_every``.
    Automatic size (``chunk_steps = 0``): few chunks that hold at most ``budget_bytes`` of metrics
    each (one logged step if a single one needs more), all of one length when some count up to
    twice the fewest divides the logged steps (each distinct length is one more compile), else
    equal but for the last."""
    if chunk_steps <= 0:
        units = -(-steps // log_every)  # logged steps
        budget = max(1, budget_bytes // max(bytes_per_step * log_every, 1))
        count = -(-units // min(budget, units))
        even = next((c for c in range(count, 2 * count + 1) if units % c == 0), None)
        chunk_steps = log_every * (units // even if even else -(-units // count))
    chunk_steps = max(log_every, chunk_steps // log_every * log_every)
    return [(t0, min(chunk_steps, steps - t0)) for t0 in range(0, steps, chunk_steps)]


class Plan(NamedTuple):
    """How a run is cut into work units: grid batches (``[(first grid point, count)]``, each
    padded to the same size) times chunks of steps, and the device layout of the seeds."""

    grid_batches: list[tuple[int, int]]
    grid_rows: int            # real grid points in a full batch
    chunks: list[tuple[int, int]]
    layout: sharding.Layout

    @property
    def grid_size(self) -> int:
        """Grid points per compiled call, padded (``sharding.Layout.grid_size``)."""
        return self.layout.grid_size


def make_plan(exp: Experiment) -> Plan:
    cfg = exp.config
    g = exp.num_grid if cfg["grid_batch"] <= 0 else min(cfg["grid_batch"], exp.num_grid)
    batches = [(g0, min(g, exp.num_grid - g0)) for g0 in range(0, exp.num_grid, g)]
    # Arrays hold at least 2 grid points per device: XLA compiles a loop over a size-1 axis
    # differently (its dynamic index becomes static), which can change the rounding.
    layout = sharding.layout(exp.num_seeds, g, cfg["devices"], cfg["seed_block"])
    # Per-seed metrics of a chunk (padded grid and seeds) are held on the devices in either mode.
    per_step = (device_columns(cfg) * np.dtype(cfg["dtype"]).itemsize * layout.grid_size
                * layout.padded // cfg["log_every"])
    chunks = plan_chunks(cfg["steps"], cfg["log_every"], cfg["chunk_steps"], per_step,
                         chunk_budget(layout))
    return Plan(batches, g, chunks, layout)


def device_columns(cfg) -> int:
    """The per-seed metric columns a chunk's budget counts on the devices: every column the rule
    logs (pass@k counted, whatever the rewards) and the covariance law's error columns, which
    ``compiled_stats`` derives from them for the statistics over seeds."""
    return len(run_columns(RULES[cfg["algo"]["name"]], cfg, binary=True))


def run_arrays(exp: Experiment, *, progress: bool = True, checkpoint=None) -> Output:
    """Run ``exp`` work unit by work unit (grid batch x chunk of steps) and return the ``Output``.

    ``checkpoint`` (a ``checkpoint.Checkpoint``) receives the state after every completed unit and
    supplies the units already done, so a killed run resumes where it stopped with identical
    results; in full mode it also receives each unit's per-seed rows, written to its folder as a
    Parquet part (``store.py``) while the next unit computes, so that host memory holds about two
    chunks of rows whatever the seeds and steps. Without one, full mode keeps every row in memory.
    JAX's x64 mode is the run's (``experiment.precision``) while it runs."""
    with precision(exp.config["dtype"]):
        return _run_arrays(exp, progress=progress, checkpoint=checkpoint)


def _run_arrays(exp: Experiment, *, progress: bool, checkpoint) -> Output:
    cfg = exp.config
    plan = make_plan(exp)
    full = cfg["output"] == "full"
    quantiles = (tuple(cfg["quantiles"]), tuple(cfg["quantile_metrics"]))
    opt_name = cfg["algo"]["optimizer"]
    pass_at = tuple(cfg["pass_at"]) if exp.env.binary_rewards() else ()
    options = tuple(sorted(exp.options.items()))
    env, theta0, keys, real = sharding.place_seeds(exp, plan.layout)
    num_logged = cfg["steps"] // cfg["log_every"]
    steps = np.arange(0, cfg["steps"], cfg["log_every"])
    in_memory = full and checkpoint is None  # rows kept: statistics when asked (Results.summary)
    collect = Collector(exp, num_logged, keep_rows=in_memory)
    done = checkpoint.completed() if checkpoint is not None else {}
    bar = _progress(cfg["steps"] * len(plan.grid_batches), exp,
                    progress and len(plan.chunks) * len(plan.grid_batches) > 1)
    final_theta = []
    with store.Background() as background:
        for b, (g0, count) in enumerate(plan.grid_batches):
            hp = {k: _padded(v[g0:g0 + count], plan.grid_size) for k, v in exp.hparams.items()}
            hp = sharding.place_grid(hp, plan.layout)
            trips = sharding.replicate(sharding.trips(plan.layout, count), plan.layout)
            state = compiled_init(exp.rule.name, opt_name, exp.env_per_seed, plan.layout)(
                theta0, env, hp, keys, trips)
            resumed = [c for c in range(len(plan.chunks)) if (b, c) in done]
            if resumed:  # the state after the last completed chunk of this batch (any layout)
                state = _repad(checkpoint.load_state(b, state), plan.layout)
            state = sharding.place_state(state, plan.layout)
            for c, (t0, length) in enumerate(plan.chunks):
                if c in resumed:
                    collect.add_stats(g0, t0, done[(b, c)])
                    bar.update(length)
                    continue
                fn = compiled_chunk(exp.rule.name, opt_name, pass_at, exp.env_per_seed, length,
                                    cfg["log_every"], options, plan.layout,
                                    tuple(cfg["diagnostics"]))
                state, out = fn(state, env, hp, jnp.asarray(t0, jnp.int32), trips)
                wanted = {} if not full else {"seeds": out}
                if not in_memory:
                    stats = compiled_stats(quantiles, plan.layout, plan.grid_rows, collect.mark)
                    wanted["stats"] = stats(out, real)
                del out
                out = sharding.to_host(compiled_cut(count, exp.num_seeds)(wanted))
                rows = None
                if full:
                    rows = out["seeds"]
                    # The statistics count the non-finite rows; the rows themselves are read
                    # only to flag them (mark mode) or to name the metrics in the error.
                    if in_memory or collect.mark or out["stats"]["nonfinite"]["count"].any():
                        rows = collect.check_rows(g0, t0, rows)
                if not in_memory:
                    collect.add_stats(g0, t0, out["stats"])
                if checkpoint is None:
                    if rows is not None:
                        collect.add_rows(g0, t0, rows)
                else:  # real grid points and seeds only; copies, as the next call donates state
                    saved = jax.tree.map(lambda x: np.array(x[:count, :exp.num_seeds]),
                                         sharding.to_host(state))
                    background.submit(_save_unit, checkpoint, b, c, saved, out["stats"], rows,
                                      exp.swept[g0:g0 + count], steps[t0 // cfg["log_every"]:][
                                          :length // cfg["log_every"]])
                bar.update(length)
            final_theta.append(sharding.to_host(state.theta)[:count, :exp.num_seeds])
    bar.close()
    folder = checkpoint.rows_folder if full and checkpoint is not None else None
    return collect.finish(np.concatenate(final_theta), folder)


def _save_unit(checkpoint, b: int, c: int, state, stats: dict, rows: dict | None,
               swept: list[dict], steps: np.ndarray) -> None:
    """Record a completed unit: its per-seed rows as a Parquet part (full mode), then its state
    and statistics (``Checkpoint.save``, which marks it done last), so a run killed at any point
    resumes from whole units."""
    if rows is not None:
        store.write_part(checkpoint.rows_folder, (b, c), rows, swept, steps, checkpoint.constants)
    checkpoint.save(b, c, state, stats)


class Output(NamedTuple):
    """What a run returns: statistics over seeds ``{name: {stat: [G, T]}}`` (None for a full
    run that keeps its rows in memory: ``summary.stats_of`` computes them when asked), per-seed
    metrics ``{name: [G, N, T]}`` (full mode without a checkpoint folder, else None), the folder of the
    per-seed Parquet parts (full mode with a checkpoint folder, else None), the final logits
    ``[G, N, S, A]`` and the count of rows marked non-finite."""

    stats: dict
    arrays: dict | None
    rows_folder: object
    final_theta: np.ndarray
    nonfinite: int


class Collector:
    """Assembles the outputs of work units on the host and applies the non-finite policy."""

    def __init__(self, exp: Experiment, num_logged: int, keep_rows: bool):
        self.exp, self.num_logged, self.keep_rows = exp, num_logged, keep_rows
        self.mark = exp.config["on_nonfinite"] == "mark"
        self.stats: dict = {}
        self.rows: dict = {}
        self.marked = 0

    def check_rows(self, g0: int, t0: int, rows: dict) -> dict:
        """Check one unit's per-seed rows ``{name: [count, N, T_chunk]}``: raise at the first
        non-finite value, or (mark mode) return them with the ``nonfinite`` flags."""
        checked = {k: v for k, v in rows.items() if k not in NAN_ALLOWED}
        bad = np.zeros(next(iter(checked.values())).shape, bool)
        for values in checked.values():
            bad |= ~np.isfinite(values)
        if bad.any() and not self.mark:
            idx = np.argwhere(bad)
            g, n, t = (int(i) for i in idx[np.argmin(idx[:, 2])])
            names = ", ".join(f"{k} = {v[g, n, t]}" for k, v in checked.items()
                              if not np.isfinite(v[g, n, t]))
            raise nonfinite_error(self.exp, g0 + g, n, t0 + t * self.exp.config["log_every"],
                                  names)
        return {**rows, "nonfinite": bad} if self.mark else rows

    def add_stats(self, g0: int, t0: int, stats: dict) -> None:
        """Check and place one unit's statistics ``{name: {stat: [count, T_chunk]}}``."""
        bad = stats["nonfinite"]
        if bad["count"].any() and not self.mark:
            g, t = np.argwhere(bad["count"] > 0)[0]
            raise nonfinite_error(self.exp, g0 + g, int(bad["first_seed"][g, t]),
                                  t0 + t * self.exp.config["log_every"], "")
        self.marked += int(bad["count"].sum())
        self._place(self.stats, g0, t0, stats)

    def add_rows(self, g0: int, t0: int, rows: dict) -> None:
        """Place one unit's checked rows (a run that keeps them in memory, without statistics
        until they are asked for: its marked rows are counted here)."""
        if "nonfinite" in rows:
            self.marked += int(rows["nonfinite"].sum())
        self._place(self.rows, g0, t0, rows)

    def _place(self, root: dict, g0: int, t0: int, tree: dict) -> None:
        t_lo = t0 // self.exp.config["log_every"]
        for path, values in _leaves(tree):
            node = root
            for key in path[:-1]:
                node = node.setdefault(key, {})
            if path[-1] not in node:
                shape = (self.exp.num_grid,) + values.shape[1:-1] + (self.num_logged,)
                node[path[-1]] = np.empty(shape, values.dtype)
            node[path[-1]][g0:g0 + values.shape[0], ..., t_lo:t_lo + values.shape[-1]] = values

    def finish(self, final_theta: np.ndarray, rows_folder=None) -> Output:
        if self.marked:
            flagged = "column 'nonfinite' and " if self.exp.config["output"] == "full" else ""
            warnings.warn(f"{self.marked} rows had NaN or infinite values; they are marked "
                          f"({flagged}excluded from the statistics)",
                          NonFiniteWarning, stacklevel=3)
        return Output(self.stats or None, self.rows if self.keep_rows else None, rows_folder,
                      final_theta, self.marked)


class NonFiniteWarning(UserWarning):
    """Rows were marked non-finite (``on_nonfinite = "mark"``)."""


def nonfinite_error(exp: Experiment, g: int, n: int, step_index: int, names: str) -> NonFiniteError:
    where = ", ".join(f"{k}={v}" for k, v in exp.swept[g].items()) or "the only grid point"
    what = f": {names}" if names else ""
    return NonFiniteError(f"non-finite values at step {step_index}, seed {n}, grid point {g} "
                          f"({where}){what}; the logits may have overflowed (try a smaller eta "
                          f"or dtype = \"float64\", or on_nonfinite = \"mark\" to flag such rows "
                          f"and go on)")


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, tree


def _repad(state, lay: sharding.Layout):
    """A saved state ``[g, N, ...]`` (real rows) padded for ``lay``: seeds with copies of seed 0
    (as ``sharding.place_seeds`` pads, so they equal the computed padding), grid rows with copies
    of the last (never computed)."""
    def pad(x):
        x = np.concatenate([x, np.repeat(x[:, :1], lay.padded - x.shape[1], axis=1)], axis=1)
        return np.concatenate([x, np.repeat(x[-1:], lay.grid_size - x.shape[0], axis=0)])
    return jax.tree.map(pad, state)


def _padded(x, size: int):
    """``x: [g, ...]`` padded to ``[size, ...]`` by repeating its last entry."""
    x = jnp.asarray(x)
    return jnp.concatenate([x, jnp.repeat(x[-1:], size - x.shape[0], axis=0)]) if x.shape[0] < size else x


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(steps: int, exp: Experiment, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    label = exp.config["name"] or exp.rule.name
    return tqdm(total=steps, desc=label, unit="step", leave=False)

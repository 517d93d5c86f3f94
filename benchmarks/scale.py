"""Scale benchmark: the engine against a NumPy implementation of the same maths, and its speed limit.

    python benchmarks/scale.py [--quick] [--long] [--check] [--json out.json]

Canonical workloads, each timed after compilation (compile time = first call minus the best steady
call) and reported in seed-steps per second, next to a NumPy implementation of the same maths
written below (float32, vectorised over seeds, every per-step diagnostic the engine logs for the
workload kept in preallocated ``[T, N]`` arrays) run in the same process:

- exact NPG, 10-armed bandits, 10,000 seeds x 1,000 steps, full per-step diagnostics;
- sampled REINFORCE (batch-mean baseline), 10-armed Bernoulli bandits, batch 64, 10,000 x 1,000;
- exact PG on random (Garnet) MDPs, S = 50, A = 5, gamma = 0.9, 1,000 seeds x 500 steps;
- AEPO on contextual bandits, 64 prompts x 8 actions (2 correct), 64 prompts per step x G = 8,
  1,000 seeds x 500 steps;
- an ``npg_entropy`` sweep over a 4 x 4 (eta x tau) grid, run again with new values: the grid
  compiles once per chunk length, and new values compile nothing;
- peak memory (fresh subprocesses, peak RSS ``VmHWM``) of the first workload per-step, with a
  ``log_every`` stride, and with ``output = "summary"``;
- the speed limit of the first workload: the irreducible work (the entropy of every logged policy,
  one fused scan) next to the engine's full step, with the variants between them (layout,
  diagnostics, seed blocks, the engine's step with its diagnostics cut or rewritten, host side,
  one CPU device instead of one per core, summary mode).

``--quick`` shrinks every size 10-50x (two to three minutes on this 2-core machine under load); ``--check``
first checks every NumPy reference against the engine on small cases (exact rules row by row; the
sampled ones both row by row when fed the engine's own uniforms and in distribution with NumPy's
generator); ``--long`` adds 100,000 seeds x 10,000 steps of the first workload in summary mode
(wall time and peak RSS, in a subprocess; statistics of every ``--long-log-every``-th step, default
10). NumPy is timed on fewer steps where it is slow; rates
are per seed-step either way. Not part of the unit tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

import entropy_sim as es  # noqa: F401  (configures XLA before JAX starts)
import jax
import jax.numpy as jnp

from entropy_sim.diagnostics import NAN_ALLOWED, summary
from entropy_sim.engine import runner, sharding

F32 = np.float32

SIZES = {  # seeds, steps (engine); numpy steps; engine repeats after the first (compiling) call
    "default": {"npg": (10_000, 1_000, 1_000, 3), "reinforce": (10_000, 1_000, 100, 2),
                "mdp": (1_000, 500, 20, 1), "aepo": (1_000, 500, 30, 2), "sweep": (1_000, 500, 100, 2),
                "memory": (10_000, 1_000), "long": (100_000, 10_000)},
    "quick": {"npg": (2_000, 200, 200, 3), "reinforce": (2_000, 100, 20, 2),
              "mdp": (100, 50, 5, 1), "aepo": (200, 50, 10, 2), "sweep": (200, 100, 50, 2),
              "memory": (2_000, 200), "long": (10_000, 1_000)},
}
SWEEP_ETA, SWEEP_TAU = [0.05, 0.1, 0.2, 0.4], [0.01, 0.03, 0.1, 0.3]
SWEEP_ETA_2, SWEEP_TAU_2 = [0.06, 0.12, 0.25, 0.5], [0.02, 0.05, 0.15, 0.4]


def config(name: str, seeds: int, steps: int, **top) -> dict:
    """The engine config of a workload."""
    base = {"seeds": seeds, "steps": steps, **top}
    if name == "npg":
        return {**base, "env": {"kind": "bandit", "arms": 10}, "algo": {"name": "npg", "eta": 0.1}}
    if name == "reinforce":
        return {**base, "env": {"kind": "bandit", "arms": 10, "noise": "bernoulli"},
                "algo": {"name": "reinforce", "eta": 0.1, "batch": 64, "baseline": "mean"}}
    if name == "mdp":
        return {**base, "env": {"kind": "mdp", "generator": "garnet", "states": 50, "actions": 5,
                                "gamma": 0.9}, "algo": {"name": "pg", "eta": 1.0}}
    if name == "aepo":
        # batch = 64 prompts drawn from rho per step (with replacement, as the engine draws them).
        return {**base, "env": {"kind": "contextual_bandit", "contexts": 64, "actions": 8,
                                "generator": "verifiable", "num_correct": 2},
                "policy": {"init": "gaussian", "scale": 1.0},
                "algo": {"name": "aepo", "eta": 10.0, "entropy_target": 0.5, "batch": 64, "group": 8}}
    if name == "sweep":
        return {**base, "env": {"kind": "bandit", "arms": 10},
                "algo": {"name": "npg_entropy", "eta": SWEEP_ETA, "tau": SWEEP_TAU}}
    raise ValueError(name)


# ============================================================================ NumPy reference
# The engine's maths (softmax.py, diagnostics/, rules/, envs/) rewritten on arrays
# that carry every seed at once. Written once for numpy and jax.numpy (``xp``): the JAX versions
# are the hand-fused variants of the speed-limit breakdown. Per-state arrays keep their reduced
# action axis and per-seed values both reduced axes (keepdims), so one code serves two layouts.


class Axes(NamedTuple):
    """Where the action and state axes are."""

    a: int
    s: int


SEEDS_FIRST = Axes(-1, -2)  # [N, S, A]: the engine's layout (actions minor)
SEEDS_LAST = Axes(-2, -3)   # [S, A, N]: every reduction over actions adds whole rows of seeds


def _ra(x, ax):
    return x.sum(axis=ax.a, keepdims=True)


def _rs(x, ax):
    return x.sum(axis=ax.s, keepdims=True)


class Ev(NamedTuple):
    """``envs.base.Evaluation`` over all seeds; per-state fields keep a size-1 action axis."""

    pi: object
    log_pi: object
    ent: object      # per state
    occ: object      # per state
    q: object
    v: object        # per state
    adv: object
    ret: object      # per seed
    ret_reg: object  # per seed
    success: object  # per state (per prompt)


def policy(theta, ax, xp):
    """``(pi, log_pi, ent)`` of ``softmax(theta)`` (``jax.nn.softmax``'s and ``log_softmax``'s formulas)."""
    z = theta - theta.max(axis=ax.a, keepdims=True)
    ez = xp.exp(z)
    total = _ra(ez, ax)
    pi = ez / total
    log_pi = z - xp.log(total)
    return pi, log_pi, -_ra(pi * log_pi, ax)


def eval_bandit(theta, r, rho, tau, ax, xp) -> Ev:
    """``ContextualBandit.evaluate``; ``tau`` None (no regularisation) or per seed."""
    pi, log_pi, ent = policy(theta, ax, xp)
    success = _ra(pi * r, ax)
    if tau is None:
        v, adv = success, r - success
    else:
        q_soft = r - tau * log_pi
        v = _ra(pi * q_soft, ax)
        adv = q_soft - v
    return Ev(pi, log_pi, ent, rho, r, v, adv, _rs(rho * success, ax), _rs(rho * v, ax), success)


TILT_MAX = 30.0  # softmax._TILT_MAX: beyond it the direct forms replace the tilted ones


def _log_softmax(x, ax, xp):
    z = x - x.max(axis=ax.a, keepdims=True)
    return z - xp.log(_ra(xp.exp(z), ax))


def step_metrics(ev: Ev, ev_next: Ev, dz, ax, xp) -> dict:
    """``diagnostics.step_metrics``, per seed: the cancellation-free entropy and KL changes of
    ``softmax.entropy_change`` / ``kl_change`` (the tilted forms, and the direct ones on states
    whose centred change exceeds ``TILT_MAX``), the covariance prediction, T1's and T2's
    quantities (docs/theory.md §2). With numpy the direct forms are computed only when some state
    needs them; with jax.numpy always (a ``where``, as the engine does)."""
    pi, log_pi, occ = ev.pi, ev.log_pi, ev.occ
    u = dz - _ra(pi * dz, ax)
    large = xp.abs(u).max(axis=ax.a, keepdims=True) > TILT_MAX
    any_large = xp is not np or bool(large.any())
    u_t = u
    if any_large:
        dz_t = xp.where(large, 0.0, dz)
        u_t = dz_t - _ra(pi * dz_t, ax)
    e = xp.expm1(u_t)
    m = _ra(pi * e, ax)
    w = (e - m) / (1 + m)
    log1p_m = xp.log1p(m)
    ent_change = log1p_m - _ra(pi * (log_pi + u_t) * w, ax)
    kl = _ra(pi * u_t * w, ax) - log1p_m
    if any_large:
        log_next = _log_softmax(log_pi + dz, ax, xp)
        ent_change = xp.where(large, _ra(pi * log_pi, ax) - _ra(xp.exp(log_next) * log_next, ax),
                              ent_change)
        log_pi_kl = xp.log(xp.maximum(pi, np.finfo(np.float32).tiny))
        log_next = _log_softmax(log_pi_kl + dz, ax, xp)
        kl = xp.where(large, _ra(xp.exp(log_next) * (log_next - log_pi_kl), ax), kl)
    within = _rs(occ * ent_change, ax)
    shift = _rs((ev_next.occ - occ) * ev_next.ent, ax)
    p2 = _ra(pi * pi, ax)
    dz_abs = xp.abs(dz).max(axis=ax.a, keepdims=True)
    return {
        "entropy": _rs(occ * ev.ent, ax),
        "dH_realized": within + shift,
        "dH_pred_cov": -_rs(occ * _ra(pi * (log_pi + ev.ent) * u, ax), ax),
        "dH_within": within,
        "dH_shift": shift,
        "return": ev.ret,
        "renyi2": -_rs(occ * xp.log(p2), ax),
        "grad_sq_norm": _rs(occ * (1 - p2), ax),
        "kl": _rs(occ * kl, ax),
        "kl_quad": 0.5 * _rs(occ * _ra(pi * u * u, ax), ax),
        "kl_bound": _rs(occ * (0.5 * dz.shape[ax.a]) * dz_abs ** 2 * (1 - xp.exp(-ev.ent)), ax),
        "dz_max": dz_abs.max(axis=ax.s, keepdims=True),
    }


def cov_log_pi(ev: Ev, x, ax):
    """``Cov_pi(log pi, x)`` per state."""
    return _ra(ev.pi * (ev.log_pi + ev.ent) * (x - _ra(ev.pi * x, ax)), ax)


def npg_closed(ev: Ev, eta, tau, ax):
    """T4 (docs/theory.md §3.4), NPG:
    ``sum_s d(s) (-eta) [Cov(log pi, Q_tau) - tau Var(log pi)]``."""
    closed = cov_log_pi(ev, ev.q, ax)
    if tau is not None:
        lc = ev.log_pi + ev.ent
        closed = closed - tau * _ra(ev.pi * lc * lc, ax)
    return _rs(ev.occ * (-eta * closed), ax)


def pg_closed(ev: Ev, eta, horizon, ax):
    """T4, PG: ``sum_s d(s) (-eta h d(s) Cov(log pi, pi A))``."""
    return _rs(ev.occ * (-eta * horizon * ev.occ * cov_log_pi(ev, ev.pi * ev.adv, ax)), ax)


class Recorder:
    """Per-step rows into preallocated ``{name: [T, N]}`` float32 arrays (allocated at step 0)."""

    def __init__(self, steps: int):
        self.steps, self.out = steps, None

    def add(self, t: int, row: dict):
        if self.out is None:
            n = np.size(next(iter(row.values())))
            self.out = {k: np.empty((self.steps, n), F32) for k in row}
        for k, v in row.items():
            self.out[k][t] = np.reshape(v, -1)


def numpy_npg(r, rho, theta, eta, steps, ax, tau=None) -> dict:
    """Exact NPG (``npg``; ``npg_entropy`` with ``tau``) on (contextual) bandits: ``dz = eta A_tau``.
    ``eta``, ``tau``: scalars or per seed (a flattened grid)."""
    rec = Recorder(steps)
    ev = eval_bandit(theta, r, rho, tau, ax, np)
    for t in range(steps):
        dz = eta * ev.adv
        theta = theta + dz
        ev_next = eval_bandit(theta, r, rho, tau, ax, np)
        row = step_metrics(ev, ev_next, dz, ax, np)
        row["dH_pred_closed"] = npg_closed(ev, eta, tau, ax)
        if tau is not None:
            row["return_reg"] = ev.ret_reg
        rec.add(t, row)
        ev = ev_next
    return rec.out


def eval_mdp(theta, P, r, gamma, mu, eye) -> Ev:
    """``TabularMDP.evaluate`` (tau = 0) over seeds, layout ``SEEDS_FIRST``: ``theta [N, S, A]``,
    ``P [N, S, A, S]``. The two linear solves (``V`` and the occupancy) go in one batched call."""
    ax = SEEDS_FIRST
    pi, log_pi, ent = policy(theta, ax, np)
    p_pi = np.einsum("nsa,nsat->nst", pi, P)
    r_pi = (pi * r).sum(-1)
    m = eye - gamma * p_pi
    n = theta.shape[0]
    sol = np.linalg.solve(np.concatenate([m, np.swapaxes(m, 1, 2)]),
                          np.concatenate([r_pi, mu])[..., None])[..., 0]
    v, occ = sol[:n], (1 - gamma) * sol[n:]
    q = r + gamma * np.einsum("nsat,nt->nsa", P, v)
    ret = (mu * v).sum(-1)[:, None, None]
    return Ev(pi, log_pi, ent, occ[..., None], q, v[..., None], q - v[..., None], ret, ret, None)


def numpy_pg_mdp(P, r, gamma, mu, theta, eta, steps) -> dict:
    """Exact softmax PG on MDPs: ``dz = eta h d(s) pi A``, ``h = 1 / (1 - gamma)``."""
    rec = Recorder(steps)
    eye = np.eye(P.shape[1], dtype=F32)
    horizon = F32(1) / (F32(1) - gamma)
    ev = eval_mdp(theta, P, r, gamma, mu, eye)
    for t in range(steps):
        dz = eta * horizon * ev.occ * ev.pi * ev.adv
        theta = theta + dz
        ev_next = eval_mdp(theta, P, r, gamma, mu, eye)
        row = step_metrics(ev, ev_next, dz, SEEDS_FIRST, np)
        row["dH_pred_closed"] = pg_closed(ev, eta, horizon, SEEDS_FIRST)
        rec.add(t, row)
        ev = ev_next
    return rec.out


def inverse_cdf(u, rows):
    """``sampling.inverse_cdf`` seeds-last: ``u [M, G, N]``, ``rows [M, A, N]`` -> ``[M, G, N]``."""
    x = u * rows[:, -1:, :]
    count = np.zeros(u.shape, np.int32)
    for a in range(rows.shape[1]):
        count += x >= rows[:, a:a + 1, :]
    return np.minimum(count, rows.shape[1] - 1)


def numpy_reinforce(r, theta, eta, batch, steps, uniforms) -> dict:
    """Sampled REINFORCE with the batch-mean baseline on Bernoulli bandits (``SEEDS_LAST``,
    ``S = 1``): ``B`` inverse-CDF draws per seed, the same uniform deciding the reward
    (``ContextualBandit.sample``), direction ``(1/B) sum_i (R_i - mean R) (e_a_i - pi)``.
    ``uniforms(t)``: ``[B, N]`` float32."""
    ax = SEEDS_LAST
    num_actions, n = theta.shape[1:]
    rho = np.ones((1, 1, n), F32)
    rec = Recorder(steps)
    seeds = np.arange(n)
    r_flat = r[0].reshape(-1)
    ev = eval_bandit(theta, r, rho, None, ax, np)
    factor = F32(1 - 1 / batch)
    for t in range(steps):
        u = uniforms(t)
        cdf = np.cumsum(ev.pi[0], axis=0)  # [A, N]
        action = inverse_cdf(u[None], cdf[None])[0]  # [B, N]
        flat = action * n + seeds
        cdf_flat = cdf.reshape(-1)
        end = cdf_flat[flat]
        start = np.where(action > 0, cdf_flat[np.maximum(flat - n, 0)], F32(0))
        mean = r_flat[flat]
        inside = u * cdf[-1] < start + (end - start) * mean
        reward = np.where(mean >= 1, F32(1), np.where(mean <= 0, F32(0), inside.astype(F32)))
        weight = reward - reward.sum(0) / F32(batch)
        table = np.bincount(flat.reshape(-1), weight.reshape(-1), num_actions * n)
        table = table.astype(F32).reshape(1, num_actions, n)
        dz = eta * (table - _ra(table, ax) * ev.pi) / F32(batch)
        theta = theta + dz
        ev_next = eval_bandit(theta, r, rho, None, ax, np)
        row = step_metrics(ev, ev_next, dz, ax, np)
        row["dH_pred_closed"] = factor * pg_closed(ev, eta, F32(1), ax)
        row["batch_reward"] = reward.mean(0)
        rec.add(t, row)
        ev = ev_next
    return rec.out


AEPO_OMITTED = ()  # every column the engine logs for AEPO is computed (clip_frac is exactly 0)


def numpy_aepo(r, rho, theta, hp, batch, group, steps, uniforms, pass_at=(1, 8)) -> dict:
    """AEPO (``objectives.policy_step`` with AEPO's pieces, ``epochs = 1``) on contextual bandits with
    binary rewards, ``SEEDS_LAST``: ``theta, r [S, A, N]``, ``rho [S]`` shared by the seeds.

    On-policy the ratio is exactly 1, so PPO's clip never acts and the gradient of the objective
    is ``(1/N) [sum_i A_i grad log pi(a_i|s_i) + alpha sum_j R_j grad log pi(a_j|s_j)]`` over
    GRPO's ``N = batch * group`` tokens and the first ``k`` positive responses ``j`` of a second
    batch drawn at ``T`` (``T_high``, ``k = pos_up`` while ``H < entropy_target``, else ``T_low``,
    ``pos_down``). Also Theorem 4.3's columns (docs/theory.md §4.2; ``diagnostics.temperature_law``,
    with the ``T`` derivative of ``softmax(theta / T)`` at 1 written out: ``-pi (theta - E_pi theta)``)
    and pass@k.
    ``uniforms(t)``: ``{prompt, action, reg_prompt, reg_action}``, ``[M, N]`` and ``[M, G, N]``."""
    ax = SEEDS_LAST
    num_states, num_actions, n = theta.shape
    rho3 = np.broadcast_to(rho[:, None, None], (num_states, 1, n)).astype(F32)
    cdf_rho = np.cumsum(rho.astype(F32))
    seeds = np.arange(n)
    r_flat = r.reshape(-1)
    tokens = batch * group
    eta = F32(hp["eta"])
    scale_reg = F32(hp["alpha"]) / F32(tokens)
    rec = Recorder(steps)
    ev = eval_bandit(theta, r, rho3, None, ax, np)

    def draw(logits_pi, u_prompt, u_action):
        prompt = np.minimum(np.searchsorted(cdf_rho, u_prompt * cdf_rho[-1], side="right"),
                            num_states - 1)  # [M, N]
        rows = np.take_along_axis(np.cumsum(logits_pi, axis=1), prompt[:, None, :], axis=0)
        action = inverse_cdf(u_action, rows)  # [M, G, N]
        flat = (prompt[:, None, :] * num_actions + action) * n + seeds
        return prompt, flat, r_flat[flat]

    for t in range(steps):
        u = uniforms(t)
        prompt, flat, reward = draw(ev.pi, u["prompt"], u["action"])
        mean = reward.mean(1, keepdims=True)
        std = np.sqrt(((reward - mean) ** 2).sum(1, keepdims=True) / F32(group - 1))
        equal = (reward == reward[:, :1]).all(1, keepdims=True)
        adv = np.where(equal, F32(0), (reward - mean) / np.where(equal, F32(1), std))
        entropy = _rs(rho3 * ev.ent, ax)[0, 0]
        raising = entropy < hp["entropy_target"]
        temp = np.where(raising, F32(hp["temp_high"]), F32(hp["temp_low"]))
        pi_temp = policy(theta / temp, ax, np)[0]
        _, flat_reg, reward_reg = draw(pi_temp, u["reg_prompt"], u["reg_action"])
        positive = reward_reg > 0
        order = np.cumsum(positive.reshape(-1, n), axis=0).reshape(positive.shape)
        kept = positive & (order <= np.where(raising, hp["pos_up"], hp["pos_down"]))
        table = np.bincount(np.concatenate([flat.reshape(-1), flat_reg.reshape(-1)]),
                            np.concatenate([(adv / F32(tokens)).reshape(-1),
                                            (scale_reg * np.where(kept, reward_reg, F32(0))).reshape(-1)]),
                            num_states * num_actions * n)
        table = table.astype(F32).reshape(num_states, num_actions, n)
        dz = eta * (table - _ra(table, ax) * ev.pi)
        # Theorem 4.3 (before the update: it describes pi_t).
        centred = theta - _ra(ev.pi * theta, ax)
        cov_b = ev.pi * centred - _ra(ev.pi * centred * (ev.pi - _ra(ev.pi * ev.pi, ax)), ax)
        weight = eta * rho3
        at_one = -weight * _ra(ev.pi * r * cov_b, ax)
        slope = weight * _ra(ev.pi * centred * r * cov_b, ax)
        at_temp = -weight * _ra(pi_temp * r * cov_b, ax)
        premise = at_one < 0
        fail = np.clip(1 - ev.success, 0, 1)
        theta = theta + dz
        ev_next = eval_bandit(theta, r, rho3, None, ax, np)
        row = step_metrics(ev, ev_next, dz, ax, np)
        row.update({
            "dH_pred_closed": np.full(n, np.nan, F32),
            "entropy_batch": np.take_along_axis(ev.ent[:, 0, :], prompt, axis=0).mean(0),
            "batch_reward": reward.mean((0, 1)),
            "zero_adv_groups": equal.mean((0, 1), dtype=F32),
            "clip_frac": np.zeros(n, F32),  # on-policy: the ratio is exactly 1 at the only gradient
            "clip_frac_low": np.zeros(n, F32),
            "clip_frac_high": np.zeros(n, F32),
            "temp_used": temp,
            "dH_temp": _rs(rho3 * at_temp, ax),
            "dH_dT": _rs(rho3 * slope, ax),
            "thm43_premise": _rs(rho3 * premise, ax),
            "thm43_conclusion": _rs(rho3 * (premise & (slope > 0)), ax),
            "reg_samples": kept.sum((0, 1)).astype(F32),
        })
        for k in pass_at:
            row[f"pass_at_{k}"] = _rs(rho3 * (1 - fail ** k), ax)
        rec.add(t, row)
        ev = ev_next
    return rec.out


def numpy_uniforms_reinforce(seed, batch, n):
    rng = np.random.default_rng(seed)
    return lambda t: rng.random((batch, n), dtype=F32)


def numpy_uniforms_aepo(seed, batch, group, n):
    rng = np.random.default_rng(seed)
    return lambda t: {"prompt": rng.random((batch, n), dtype=F32),
                      "action": rng.random((batch, group, n), dtype=F32),
                      "reg_prompt": rng.random((batch, n), dtype=F32),
                      "reg_action": rng.random((batch, group, n), dtype=F32)}


def engine_uniforms_reinforce(keys, batch):
    """The uniforms the engine draws at step ``t`` (``ContextualBandit.sample`` under the step key
    ``fold_in(seed key, t)``), seeds last: ``[B, N]``."""
    @jax.jit
    def draw(t):
        def one(key):
            _, k_action, _ = jax.random.split(jax.random.fold_in(key, t), 3)
            return jax.random.uniform(k_action, (batch, 1), jnp.float32)[:, 0]
        return jax.vmap(one, out_axes=-1)(keys)
    return lambda t: np.asarray(draw(t))


def engine_uniforms_aepo(keys, batch, group):
    """As ``engine_uniforms_reinforce`` for AEPO: GRPO's batch under the step key's first split,
    the regulariser's under its second (``objectives.policy_step``)."""
    @jax.jit
    def draw(t):
        def one(key):
            k_batch, k_reg, _ = jax.random.split(jax.random.fold_in(key, t), 3)
            out = {}
            for name, k in (("", k_batch), ("reg_", k_reg)):
                k_prompt, k_action, _ = jax.random.split(k, 3)
                out[name + "prompt"] = jax.random.uniform(k_prompt, (batch,), jnp.float32)
                out[name + "action"] = jax.random.uniform(k_action, (batch, group), jnp.float32)
            return out
        return jax.vmap(one, out_axes=-1)(keys)
    return lambda t: {k: np.asarray(v) for k, v in draw(t).items()}


# ----------------------------------------------------------------------------- engine arrays -> numpy

def last(x):
    """``[N, ...]`` -> ``[..., N]`` contiguous float32."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(x, F32), 0, -1))


def numpy_inputs(exp, ax=SEEDS_LAST):
    """Rewards, prompt weights and initial logits of a bandit experiment in layout ``ax``."""
    r, rho, theta = np.asarray(exp.env.r, F32), np.asarray(exp.env.rho, F32), np.asarray(exp.theta0, F32)
    if not exp.env_per_seed:
        r, rho = np.broadcast_to(r, theta.shape), np.broadcast_to(rho, theta.shape[:2])
    if ax == SEEDS_LAST:
        return last(r), last(rho)[:, None, :], last(theta)
    return np.ascontiguousarray(r), np.ascontiguousarray(rho)[..., None], theta.copy()


def run_numpy(name, exp, steps, ax=SEEDS_LAST, uniforms=None, seed=0) -> dict:
    """The NumPy reference of workload ``name`` on ``exp``'s environments and initial logits."""
    algo = exp.config["algo"]
    if name in ("npg", "sweep"):
        r, rho, theta = numpy_inputs(exp, ax)
        hp = exp.hparams
        if name == "npg":
            return numpy_npg(r, rho, theta, F32(hp["eta"][0]), steps, ax)
        # The grid flattened into the seed axis: column g * N + n.
        g = exp.num_grid
        tile = lambda x: np.concatenate([x] * g, axis=-1)  # noqa: E731
        per = lambda v: np.repeat(np.asarray(v, F32), exp.num_seeds)[None, None, :]  # noqa: E731
        return numpy_npg(tile(r), tile(rho), tile(theta), per(hp["eta"]), steps, ax, tau=per(hp["tau"]))
    if name == "reinforce":
        r, _, theta = numpy_inputs(exp)
        uniforms = uniforms or numpy_uniforms_reinforce(seed, algo["batch"], exp.num_seeds)
        return numpy_reinforce(r, theta, F32(algo["eta"]), algo["batch"], steps, uniforms)
    if name == "mdp":
        env = exp.env
        P, r, mu = (np.asarray(x, F32) for x in (env.P, env.r, env.mu))
        gamma = F32(np.asarray(env.gamma).reshape(-1)[0])
        return numpy_pg_mdp(P, r, gamma, mu, np.asarray(exp.theta0, F32), F32(algo["eta"]), steps)
    if name == "aepo":
        r, _, theta = numpy_inputs(exp)
        rho = np.asarray(exp.env.rho, F32)
        assert (rho == rho[0]).all(), "the NumPy AEPO assumes one rho for all seeds"
        hp = {k: float(v[0]) for k, v in exp.hparams.items()}
        uniforms = uniforms or numpy_uniforms_aepo(seed, algo["batch"], algo["group"], exp.num_seeds)
        return numpy_aepo(r, rho[0], theta, hp, algo["batch"], algo["group"], steps, uniforms,
                          tuple(exp.config["pass_at"]))
    raise ValueError(name)


# ============================================================================ timing

def best_of(fn, repeats):
    """``(first call, best of `repeats` further calls)`` in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, min(times) if times else first


def clear_caches():
    runner.compiled_chunk.cache_clear()
    runner.compiled_init.cache_clear()


def time_engine(cfg, repeats):
    """``(compile s, steady s)`` of ``runner.run_arrays`` on ``cfg`` (caches cleared first)."""
    exp = es.build(es.Config(cfg))
    clear_caches()
    first, steady = best_of(lambda: runner.run_arrays(exp, progress=False), repeats)
    return max(first - steady, 0.0), steady


def time_numpy(name, exp, steps, repeats=1, ax=SEEDS_LAST):
    """Best of ``repeats`` runs of the NumPy reference (nothing to compile: the first counts)."""
    return min(best_of(lambda: run_numpy(name, exp, steps, ax), repeats - 1))


def fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def workloads(size):
    """The main table: engine and NumPy rates of every workload."""
    rows = []
    labels = {"npg": "exact NPG, 10-armed bandit, full diagnostics",
              "reinforce": "REINFORCE + mean baseline, 10-armed Bernoulli bandit, B = 64",
              "mdp": "exact PG, Garnet MDP S = 50, A = 5, gamma = 0.9",
              "aepo": "AEPO, 64 prompts x 8 actions, 64 x G = 8 per step"}
    for name, label in labels.items():
        seeds, steps, np_steps, repeats = size[name]
        cfg = config(name, seeds, steps)
        print(f"  {label}: engine ...", flush=True)
        compile_s, steady = time_engine(cfg, repeats)
        exp = es.build(es.Config(config(name, seeds, np_steps)))
        print(f"  {label}: numpy ...", flush=True)
        np_s = time_numpy(name, exp, np_steps, repeats=2 if np_steps * seeds <= 2e6 else 1)
        engine_rate, numpy_rate = seeds * steps / steady, seeds * np_steps / np_s
        rows.append({"workload": label, "key": name, "seeds": seeds, "steps": steps,
                     "compile_s": round(compile_s, 2), "engine_s": round(steady, 3),
                     "engine_seed_steps_per_s": round(engine_rate), "numpy_steps": np_steps,
                     "numpy_s": round(np_s, 3), "numpy_seed_steps_per_s": round(numpy_rate),
                     "ratio": round(engine_rate / numpy_rate, 2)})
        if name == "npg":  # the same NumPy maths in the engine's own layout, actions minor
            first_steps = max(np_steps // 5, 1)
            s = time_numpy(name, es.build(es.Config(config(name, seeds, first_steps))), first_steps,
                           repeats=2, ax=SEEDS_FIRST)
            rows[-1]["numpy_seeds_first_seed_steps_per_s"] = round(seeds * first_steps / s)
            rows[-1]["ratio_seeds_first"] = round(engine_rate / (seeds * first_steps / s), 2)
    return rows


# ----------------------------------------------------------------------------- sweep: compiles once

def sweep(size):
    seeds, steps, np_steps, _ = size["sweep"]
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append((kw.get("fun_name", "?"), duration))

    jax.monitoring.register_event_duration_secs_listener(listen)
    clear_caches()
    try:
        first_cfg = config("sweep", seeds, steps)
        second_cfg = {**first_cfg, "algo": {"name": "npg_entropy", "eta": SWEEP_ETA_2, "tau": SWEEP_TAU_2}}
        times, chunk_compiles, all_compiles = [], [], []
        for cfg in (first_cfg, second_cfg, first_cfg):
            del compiles[:]
            start = time.perf_counter()
            es.run(cfg, progress=False)
            times.append(time.perf_counter() - start)
            chunk_compiles.append(sum(1 for f, _ in compiles if f == "jit(chunk)"))
            all_compiles.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    exp = es.build(es.Config(first_cfg))
    plan = runner.make_plan(exp)
    info = runner.compiled_chunk.cache_info()
    lengths = sorted({length for _, length in plan.chunks})
    # Traces per chunk length (a second one when the state a chunk returns has another jit
    # signature than the initial state; the backend compile is then a cache hit).
    traces = {length: runner.compiled_chunk(exp.rule.name, "sgd", (), exp.env_per_seed, length, 1, (),
                                            plan.layout, ())._cache_size()
              for length in lengths}
    grid = exp.num_grid
    steady = min(times[1:])
    np_exp = es.build(es.Config(config("sweep", seeds, np_steps)))
    np_s = time_numpy("sweep", np_exp, np_steps)
    engine_rate, numpy_rate = grid * seeds * steps / steady, grid * seeds * np_steps / np_s
    return {
        "workload": "npg_entropy sweep, 4 x 4 (eta x tau) grid, 10-armed bandit", "key": "sweep",
        "grid": grid, "seeds": seeds, "steps": steps,
        "first_run_s": round(times[0], 2), "second_run_new_values_s": round(times[1], 2),
        "third_run_s": round(times[2], 2), "compile_s": round(max(times[0] - steady, 0), 2),
        "engine_s": round(steady, 3),
        "chunk_compiles_per_run": chunk_compiles, "xla_compiles_per_run": all_compiles,
        "compiled_chunk_cache": {"hits": info.hits, "misses": info.misses, "entries": info.currsize},
        "chunk_lengths": [length for _, length in plan.chunks], "chunk_traces_per_length": traces,
        "engine_seed_steps_per_s": round(engine_rate), "numpy_steps": np_steps,
        "numpy_s": round(np_s, 3), "numpy_seed_steps_per_s": round(numpy_rate),
        "ratio": round(engine_rate / numpy_rate, 2),
    }


# ----------------------------------------------------------------------------- speed limit

def _sync(tree):
    return jax.block_until_ready(tree)


def fused_entropy_only(r, theta, eta, steps, ax):
    """The irreducible work: carry ``theta``, ``theta += eta A``, emit ``H(pi_t)``. ``[T, N]``."""
    def body(theta, _):
        pi, log_pi, ent = policy(theta, ax, jnp)
        return theta + eta * (r - _ra(pi * r, ax)), ent.reshape(-1)
    return jax.lax.scan(body, theta, None, length=steps)[1]


def fused_all(r, rho, theta, eta, steps, ax):
    """The update and every diagnostic of ``npg`` in one scan (this file's maths in jax.numpy)."""
    def body(carry, _):
        theta, ev = carry
        dz = eta * ev.adv
        theta = theta + dz
        ev_next = eval_bandit(theta, r, rho, None, ax, jnp)
        row = step_metrics(ev, ev_next, dz, ax, jnp)
        row["dH_pred_closed"] = npg_closed(ev, eta, None, ax)
        return (theta, ev_next), {k: v.reshape(-1) for k, v in row.items()}
    ev = eval_bandit(theta, r, rho, None, ax, jnp)
    return jax.lax.scan(body, (theta, ev), None, length=steps)[1]


def fused_all_blocked(r, rho, theta, eta, steps, block):
    """``fused_all`` (``SEEDS_FIRST``) over blocks of ``block`` seeds one after the other, each
    running every step, outputs ``[N, T]``: the engine's loop structure (sharding.blockwise)."""
    def one(args):
        out = fused_all(*args, eta, steps, SEEDS_FIRST)
        return {k: v.T for k, v in out.items()}
    split = lambda x: x.reshape((-1, block) + x.shape[1:])  # noqa: E731
    out = jax.lax.map(one, (split(r), split(rho), split(theta)))
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}


def engine_device(exp, repeats):
    """Best time of the engine's compiled chunks alone (what ``run_arrays`` launches before the
    statistics over seeds), outputs left on the device: no statistics, no transfer, no
    non-finite check, no collection."""
    cfg = exp.config
    plan = runner.make_plan(exp)
    pass_at = tuple(cfg["pass_at"]) if exp.env.binary_rewards() else ()
    options = tuple(sorted(exp.options.items()))
    env, theta0, keys, real = sharding.place_seeds(exp, plan.layout)
    assert len(plan.grid_batches) == 1
    count = plan.grid_batches[0][1]
    hp = sharding.place_grid({k: runner._padded(v[:count], plan.grid_size)
                              for k, v in exp.hparams.items()}, plan.layout)
    trips = sharding.replicate(sharding.trips(plan.layout, count), plan.layout)
    init = runner.compiled_init(exp.rule.name, "sgd", exp.env_per_seed, plan.layout)
    best = None
    for _ in range(repeats + 1):
        state = sharding.place_state(init(theta0, env, hp, keys, trips), plan.layout)
        _sync(state)
        start = time.perf_counter()
        outs = []
        for t0, length in plan.chunks:
            fn = runner.compiled_chunk(exp.rule.name, "sgd", pass_at, exp.env_per_seed, length,
                                       cfg["log_every"], options, plan.layout,
                                       tuple(cfg["diagnostics"]))
            state, out = fn(state, env, hp, jnp.asarray(t0, jnp.int32), trips)
            outs.append(out)
        _sync(outs)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
        del outs
    return best


def time_jit(fn, args, repeats):
    jitted = jax.jit(fn)
    return best_of(lambda: _sync(jitted(*args)), repeats)[1]


def speed_limit(size):
    """The first workload from the irreducible work up to ``es.run``, step by step."""
    seeds, steps, _, repeats = size["npg"]
    cfg = config("npg", seeds, steps)
    exp = es.build(es.Config(cfg))
    eta = jnp.float32(exp.hparams["eta"][0])
    r_first, rho_first, theta_first = (jnp.asarray(x) for x in numpy_inputs(exp, SEEDS_FIRST))
    r_last, rho_last, theta_last = (jnp.asarray(x) for x in numpy_inputs(exp, SEEDS_LAST))
    block = runner.make_plan(exp).layout.block
    pad = -seeds % block
    padded = [jnp.concatenate([x, jnp.repeat(x[:1], pad, 0)]) for x in (r_first, rho_first, theta_first)]
    rows = []

    def add(key, label, seconds, vs=None, steps_timed=steps):
        """Variant ``key`` timed on ``steps_timed`` steps (seconds scaled to ``steps``), compared
        with variant ``vs``: what it adds is the difference."""
        seconds = seconds * steps / steps_timed
        rows.append({"key": key, "variant": label, "seconds": round(seconds, 4),
                     "seed_steps_per_s": round(seeds * steps / seconds), "vs": vs,
                     "steps_timed": steps_timed})

    print("  speed limit ...", flush=True)
    add("irreducible", "irreducible: update + entropy of every policy, one fused scan, seeds-last [A, N]",
        time_jit(lambda r, th: fused_entropy_only(r, th, eta, steps, SEEDS_LAST),
                 (r_last, theta_last), repeats))
    add("entropy_first", "the same, seeds-first [N, A] (the engine's layout: actions minor)",
        time_jit(lambda r, th: fused_entropy_only(r, th, eta, steps, SEEDS_FIRST),
                 (r_first, theta_first), repeats), "irreducible")
    add("all_last", "+ all 13 diagnostics, hand-fused, seeds-last",
        time_jit(lambda r, rho, th: fused_all(r, rho, th, eta, steps, SEEDS_LAST),
                 (r_last, rho_last, theta_last), repeats), "irreducible")
    add("all_first", "+ all 13 diagnostics, hand-fused, seeds-first",
        time_jit(lambda r, rho, th: fused_all(r, rho, th, eta, steps, SEEDS_FIRST),
                 (r_first, rho_first, theta_first), repeats), "all_last")
    add("blocked", f"+ one block of {block} seeds at a time, all steps each, [N, T] out "
                   f"(the engine's loop structure)",
        time_jit(lambda r, rho, th: fused_all_blocked(r, rho, th, eta, steps, block), padded, repeats),
        "all_first")
    add("chunks", "engine: its compiled chunks alone, outputs left on the device",
        engine_device(exp, repeats), "blocked")
    # The engine's chunks with its diagnostics swapped out (patched, then restored): what its
    # step costs without them, and with the same diagnostics written with shared intermediates.
    for key, label, metrics_fn in (
            ("update_only", "engine: chunks with step_metrics cut to the entropy (its update, "
                            "evaluation and closed form)", _entropy_only_metrics),
            ("shared", "engine: chunks with this file's step_metrics (the same 12 columns, "
                       "shared intermediates)", _engine_step_metrics)):
        original = runner.step_metrics
        runner.step_metrics = metrics_fn
        clear_caches()
        try:
            add(key, label, engine_device(exp, repeats), "chunks")
        finally:
            runner.step_metrics = original
            clear_caches()
    add("run_arrays", "engine: runner.run_arrays (+ transfer to host, non-finite check, collection)",
        best_of(lambda: runner.run_arrays(exp, progress=False), repeats)[1], "chunks")
    add("es.run", "engine: es.run (+ config, environments, keys)",
        best_of(lambda: es.run(cfg, progress=False), max(repeats - 1, 1))[1], "run_arrays")
    strided = es.build(es.Config({**cfg, "log_every": 10}))
    add("log_every", "engine: run_arrays, log_every = 10 (diagnostics of 1 step in 10)",
        best_of(lambda: runner.run_arrays(strided, progress=False), repeats)[1], "run_arrays")
    if len(jax.devices()) > 1:  # the same on one CPU device (a fresh process): what the cores give
        out = in_subprocess({"mode": "time", "cfg": cfg, "repeats": repeats},
                            env_extra={"JAX_NUM_CPU_DEVICES": "1"})
        add("one_device", f"engine: run_arrays on 1 CPU device, not {len(jax.devices())} "
                          f"(JAX_NUM_CPU_DEVICES=1, fresh process)", out["steady_s"], "run_arrays")
    short = max(steps // 10, 10)  # summary mode is slow: timed on fewer steps
    summ = es.build(es.Config({**cfg, "steps": short, "output": "summary"}))
    add("summary", f"engine: run_arrays, output = \"summary\" (timed on {short} steps)",
        best_of(lambda: runner.run_arrays(summ, progress=False), 1)[1], "run_arrays", short)
    # The statistics over seeds of one logged step, alone (what summary mode adds per step).
    lay = runner.make_plan(summ).layout
    metrics = {k: jax.random.normal(jax.random.PRNGKey(i), (1, lay.padded, 1))
               for i, k in enumerate(sorted(rows_columns()))}
    real = jnp.arange(lay.padded) < seeds
    stats = {}
    probs, chosen = tuple(summ.config["quantiles"]), tuple(summ.config["quantile_metrics"])
    for label, q in (("with quantiles", chosen), ("without quantiles", ())):
        fn = jax.jit(lambda m, real, q=q: summary.over_seeds(m, real, probs, NAN_ALLOWED, q))
        stats[label] = best_of(lambda: _sync(fn(metrics, real)), 5)[1]
    return rows, {"seeds_padded": lay.padded, "metrics": len(metrics),
                  "per_logged_step_ms": {k: round(v * 1e3, 2) for k, v in stats.items()},
                  "projected_s_for_all_steps": round(stats["with quantiles"] * steps, 2)}


def _entropy_only_metrics(ev, ev_next, dz):
    return {"entropy": jnp.sum(ev.occ * ev.ent)}


def _engine_step_metrics(ev, ev_next, dz):
    """This file's ``step_metrics`` on the engine's unbatched ``Evaluation`` (``[S, A]``)."""
    def wrap(e):
        return Ev(e.pi, e.log_pi, e.ent[:, None], e.occ[:, None], e.q, e.v[:, None], e.adv,
                  e.ret, e.ret_reg, None)
    row = step_metrics(wrap(ev), wrap(ev_next), dz, SEEDS_FIRST, jnp)
    return {k: jnp.reshape(v, ()) for k, v in row.items()}


def rows_columns():
    return ("entropy", "dH_realized", "dH_pred_cov", "dH_pred_closed", "dH_within", "dH_shift",
            "return", "renyi2", "grad_sq_norm", "kl", "kl_quad", "kl_bound", "dz_max")


# ----------------------------------------------------------------------------- memory

MEMORY_MODES = [("per-step (full, log_every = 1)", {}),
                ("full, log_every = 10", {"log_every": 10}),
                ("full, log_every = 100", {"log_every": 100}),
                ("summary, log_every = 1", {"output": "summary"}),
                ("summary, log_every = 10", {"output": "summary", "log_every": 10})]


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from ``/proc/self/status``.
    ``ru_maxrss`` is not used for the peak: Linux carries it over ``fork`` + ``exec``, so a child
    of a big parent reports at least the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(payload_json: str):
    """In a fresh process. ``memory``: ``es.run`` the config and print the resident memory before
    the run (after imports and building the experiment, so it includes JAX itself) and the peak.
    ``time``: compile and steady time of ``runner.run_arrays`` (e.g. under other ``XLA_FLAGS``)."""
    payload = json.loads(payload_json)
    cfg = payload["cfg"]
    if payload["mode"] == "time":
        compile_s, steady = time_engine(cfg, payload["repeats"])
        print(json.dumps({"compile_s": compile_s, "steady_s": steady, "devices": len(jax.devices())}))
        return
    es.build(es.Config(cfg))
    jnp.zeros(1).block_until_ready()
    out = {"rss_before_run_mb": _status_mb("VmRSS")}
    start = time.perf_counter()
    res = es.run(cfg, progress=False)
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = _status_mb("VmHWM")  # first run: includes compiling
    kept = sum(v.nbytes for v in (res.arrays or {}).values())
    kept += sum(s.nbytes for d in (res.stats or {}).values() for s in d.values())
    out["results_mb"] = kept / 2 ** 20
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del res
    gc.collect()
    try:  # reset the peak (Linux >= 4.0), then run again: the run's own peak, compiled already
        if payload.get("once"):
            raise OSError("one run only")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    else:
        out["rss_before_second_run_mb"] = _status_mb("VmRSS")
        res = es.run(cfg, progress=False)
        out["peak_second_run_mb"] = _status_mb("VmHWM")
    print(json.dumps({k: round(v, 1) for k, v in out.items()}))


def in_subprocess(payload: dict, xla_flags: str = "", timeout: float | None = None,
                  env_extra: dict | None = None) -> dict | None:
    """Run ``child(payload)`` in a fresh Python process; its JSON answer (None if it timed out)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(payload)],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode:
        raise RuntimeError(f"subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(size):
    """Peak memory of each mode, each in its own process (run side by side, one per core: the
    peaks do not depend on each other, the run times in the JSON do)."""
    seeds, steps = size["memory"]
    print(f"  memory: {len(MEMORY_MODES)} modes ...", flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        outs = list(pool.map(lambda extra: in_subprocess(
            {"mode": "memory", "cfg": config("npg", seeds, steps, **extra)}), [m[1] for m in MEMORY_MODES]))
    return [{"mode": label, "seeds": seeds, "steps": steps, **out}
            for (label, _), out in zip(MEMORY_MODES, outs)]


def long_run(size, log_every):
    seeds, steps = size["long"]
    print(f"  long: {seeds} seeds x {steps} steps, summary mode, log_every = {log_every} ...", flush=True)
    out = in_subprocess({"mode": "memory", "once": True,
                         "cfg": config("npg", seeds, steps, output="summary", log_every=log_every)})
    return {"seeds": seeds, "steps": steps, "output": "summary", "log_every": log_every, **out,
            "seed_steps_per_s": round(seeds * steps / out["seconds"])}


# ============================================================================ checks

def compare(engine_arrays: dict, out: dict, omitted=()) -> dict:
    """Per column, ``max |numpy - engine| / max(1, max |engine|)`` (NaN where both are NaN)."""
    missing = set(engine_arrays) - set(out) - set(omitted)
    assert not missing, f"NumPy reference lacks columns {sorted(missing)}"
    errors = {}
    for k, mine in out.items():
        theirs = np.asarray(engine_arrays[k], np.float64)
        theirs = theirs.reshape(-1, theirs.shape[-1]).T  # [G, N, T] -> [T, G*N]
        mine = np.asarray(mine, np.float64)
        both_nan = np.isnan(theirs) & np.isnan(mine)
        err = np.where(both_nan, 0.0, np.abs(mine - theirs))
        errors[k] = float(np.max(err) / max(1.0, np.nanmax(np.abs(theirs), initial=0.0)))
    return errors


def distribution_z(engine_arrays: dict, out: dict, columns, steps_at) -> float:
    """Largest ``|z|`` of the difference of the means over seeds (engine vs NumPy's own draws)."""
    worst = 0.0
    for k in columns:
        a = np.asarray(engine_arrays[k], np.float64)[0]  # [N, T]
        b = np.asarray(out[k], np.float64).T
        for t in steps_at:
            se = np.sqrt(a[:, t].var(ddof=1) / a.shape[0] + b[:, t].var(ddof=1) / b.shape[0])
            diff = abs(a[:, t].mean() - b[:, t].mean())
            worst = max(worst, diff / se if se > 0 else (0.0 if diff == 0 else np.inf))
    return worst


def checks():
    """NumPy references against the engine on small cases. Returns rows of results."""
    results = []

    def record(name, errors, tol_entropy=1e-5, tol=1e-4, extra=None):
        worst = max((v for k, v in errors.items() if k != "entropy"), default=0.0)
        ok = errors["entropy"] <= tol_entropy and worst <= tol
        worst_col = max((k for k in errors if k != "entropy"), key=lambda k: errors[k])
        results.append({"check": name, "entropy_err": errors["entropy"], "worst_other": worst,
                        "worst_column": worst_col, "ok": bool(ok), **(extra or {})})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: entropy {errors['entropy']:.1e}, "
              f"worst other {worst:.1e} ({worst_col})", flush=True)

    def engine(cfg):
        exp = es.build(es.Config(cfg))
        return exp, es.run(cfg, progress=False).arrays

    # Exact rules: row by row.
    for ax_name, ax in (("seeds-last", SEEDS_LAST), ("seeds-first", SEEDS_FIRST)):
        exp, arrays = engine({**config("npg", 64, 40), "policy": {"init": "gaussian", "scale": 2.0}})
        record(f"exact NPG, 64 seeds x 40 steps, {ax_name}", compare(arrays, run_numpy("npg", exp, 40, ax)))
    cfg = {**config("npg", 32, 5), "policy": {"init": "gaussian", "scale": 2.0},
           "algo": {"name": "npg", "eta": 60.0}}  # centred changes beyond TILT_MAX: direct forms
    exp, arrays = engine(cfg)
    record("exact NPG, eta = 60 (entropy and KL changes in their direct form), 32 seeds x 5 steps",
           compare(arrays, run_numpy("npg", exp, 5)))
    cfg = config("sweep", 16, 30)
    cfg["algo"] = {"name": "npg_entropy", "eta": [0.1, 0.5], "tau": [0.05, 0.3]}
    exp, arrays = engine(cfg)
    record("npg_entropy 2 x 2 grid, 16 seeds x 30 steps", compare(arrays, run_numpy("sweep", exp, 30)))
    exp, arrays = engine(config("mdp", 16, 20))
    record("exact PG, Garnet S = 50, A = 5, 16 seeds x 20 steps", compare(arrays, run_numpy("mdp", exp, 20)))
    # Sampled rules: the engine's own uniforms, row by row; NumPy's generator, in distribution.
    exp, arrays = engine(config("reinforce", 64, 30))
    uni = engine_uniforms_reinforce(exp.keys, 64)
    record("REINFORCE B = 64, engine's uniforms, 64 seeds x 30 steps",
           compare(arrays, run_numpy("reinforce", exp, 30, uniforms=uni)))
    exp, arrays = engine(config("aepo", 16, 30))
    uni = engine_uniforms_aepo(exp.keys, 64, 8)
    record("AEPO 64 x 8, engine's uniforms, 16 seeds x 30 steps",
           compare(arrays, run_numpy("aepo", exp, 30, uniforms=uni), AEPO_OMITTED))
    for name, seeds, steps, cols in (
            ("reinforce", 4000, 30, ("entropy", "return", "batch_reward", "dH_realized")),
            ("aepo", 400, 20, ("entropy", "return", "batch_reward", "reg_samples", "dH_realized"))):
        exp, arrays = engine(config(name, seeds, steps))
        z = distribution_z(arrays, run_numpy(name, exp, steps, seed=1), cols, (0, steps // 2, steps - 1))
        ok = z < 4.5
        results.append({"check": f"{name}, NumPy's own draws, {seeds} seeds x {steps} steps: "
                                 f"means of {', '.join(cols)} at 3 steps", "max_abs_z": round(z, 2),
                        "ok": bool(ok)})
        print(f"  {'ok  ' if ok else 'FAIL'} {name} in distribution ({seeds} seeds): max |z| = {z:.2f}",
              flush=True)
    return results


# ============================================================================ report

def markdown(rows, sweep_row, mem, limit, limit_summary, long_row):
    lines = ["| workload | seeds x steps | compile s | engine seed-steps/s | numpy seed-steps/s "
             "(timed on) | ratio |", "|---|---|---|---|---|---|"]
    for r in rows + ([sweep_row] if sweep_row else []):
        size = f"{r['seeds']:,} x {r['steps']:,}" + (f" x {r['grid']} grid" if "grid" in r else "")
        lines.append(f"| {r['workload']} | {size} | {r['compile_s']:.1f} | "
                     f"{fmt_rate(r['engine_seed_steps_per_s'])} | "
                     f"{fmt_rate(r['numpy_seed_steps_per_s'])} ({r['numpy_steps']} steps) | "
                     f"{r['ratio']:.2f} |")
        if "numpy_seeds_first_seed_steps_per_s" in r:
            lines.append(f"| same, NumPy in the seeds-first layout [N, A] | | | | "
                         f"{fmt_rate(r['numpy_seeds_first_seed_steps_per_s'])} | "
                         f"{r['ratio_seeds_first']:.2f} |")
    if sweep_row:
        lines += ["", f"Sweep: first run {sweep_row['first_run_s']} s, second run with new eta and "
                      f"tau values {sweep_row['second_run_new_values_s']} s, third "
                      f"{sweep_row['third_run_s']} s. XLA compiles of the chunk per run "
                      f"{sweep_row['chunk_compiles_per_run']}, one per distinct chunk length "
                      f"(chunks {sweep_row['chunk_lengths']}); all XLA compiles per run "
                      f"{sweep_row['xla_compiles_per_run']}; runner.compiled_chunk cache "
                      f"{sweep_row['compiled_chunk_cache']}; jit traces per chunk length "
                      f"{sweep_row['chunk_traces_per_length']}."]
    if mem:
        lines += ["", "| memory mode (exact NPG, fresh process each) | seeds x steps | RSS before run MB | "
                      "peak RSS, 1st run (compiles) MB | peak RSS, 2nd run MB | 2nd run peak - its "
                      "start MB | results kept MB |", "|---|---|---|---|---|---|---|"]
        for m in mem:
            second = m.get("peak_second_run_mb", float("nan"))
            grow = second - m.get("rss_before_second_run_mb", float("nan"))
            lines.append(f"| {m['mode']} | {m['seeds']:,} x {m['steps']:,} | {m['rss_before_run_mb']:.0f} | "
                         f"{m['peak_rss_mb']:.0f} | {second:.0f} | {grow:.0f} | {m['results_mb']:.1f} |")
    if limit:
        base = limit[0]["seconds"]
        by_key = {v["key"]: v for v in limit}
        lines += ["", "| speed limit (exact NPG, same seeds x steps) | s | seed-steps/s | "
                      "x irreducible | x the row it extends |", "|---|---|---|---|---|"]
        for v in limit:
            ref = by_key[v["vs"]]["seconds"] if v["vs"] else v["seconds"]
            lines.append(f"| {v['variant']} | {v['seconds']:.3f} | {fmt_rate(v['seed_steps_per_s'])} | "
                         f"{v['seconds'] / base:.1f} | {v['seconds'] / ref:.2f} |")
        s = limit_summary
        lines += ["", f"Statistics over {s['seeds_padded']:,} seeds of {s['metrics']} metrics, one "
                      f"logged step alone: {s['per_logged_step_ms']} ms "
                      f"(x steps: {s['projected_s_for_all_steps']} s)."]
    if long_row:
        lines += ["", f"Long run: {long_row['seeds']:,} seeds x {long_row['steps']:,} steps of exact "
                      f"NPG, summary mode, log_every = {long_row['log_every']}: {long_row['seconds']:.0f} s "
                      f"({fmt_rate(long_row['seed_steps_per_s'])} seed-steps/s), peak RSS "
                      f"{long_row['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every size 10-50x smaller")
    parser.add_argument("--long", action="store_true",
                        help="add 100,000 seeds x 10,000 steps of exact NPG in summary mode")
    parser.add_argument("--long-log-every", type=int, default=10,
                        help="log_every of the --long run (default 10: statistics of every 10th step)")
    parser.add_argument("--check", action="store_true", help="check the NumPy references first")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    size = SIZES["quick" if args.quick else "default"]
    report = {"size": "quick" if args.quick else "default", "load_before": os.getloadavg(),
              "jax": jax.__version__, "numpy": np.__version__, "devices": str(jax.devices()),
              "cpus": os.cpu_count(), "machine": platform.machine()}
    start = time.perf_counter()
    if args.check:
        print("checks", flush=True)
        report["checks"] = checks()
    print("workloads", flush=True)
    rows = workloads(size)
    print("sweep", flush=True)
    sweep_row = sweep(size)
    limit, limit_summary = speed_limit(size)
    print("memory", flush=True)
    mem = memory(size)
    long_row = long_run(size, args.long_log_every) if args.long else None
    report.update({"workloads": rows, "sweep": sweep_row, "speed_limit": limit,
                   "summary_statistics": limit_summary, "memory": mem, "long": long_row,
                   "load_after": os.getloadavg(), "total_s": round(time.perf_counter() - start, 1)})
    text = markdown(rows, sweep_row, mem, limit, limit_summary, long_row)
    print()
    print(text)
    print(f"\nload average before {report['load_before']}, after {report['load_after']}; "
          f"total {report['total_s']} s")
    if args.check and not all(c["ok"] for c in report["checks"]):
        print("some checks FAILED", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)
    return 0 if not args.check or all(c["ok"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Tabular discounted MDPs ``(P[s, a, s'], r[s, a], gamma, mu)`` with exact evaluation by linear solves."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from entropy_sim import errors, prng
from entropy_sim.envs.base import F32, Evaluation, float_dtype, policy
from entropy_sim.envs.registry import Draw, EnvKind, register
from entropy_sim.parts import Cases, Field, OneOf, Variant
from entropy_sim.sampling import Batch, draw_prompts, inverse_cdf

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TabularMDP:
    """A discounted MDP (docs/theory.md §1.5):

    ``V = (I - gamma P_pi)^-1 r_pi``, ``Q = r + gamma P V``, ``A = Q - V``,
    ``d_mu = (1 - gamma) mu^T (I - gamma P_pi)^-1``, ``J = mu^T V``.
    """

    P: Array      # [S, A, S] transition probabilities P(s' | s, a)
    r: Array      # [S, A] expected reward
    gamma: Array  # [] discount in [0, 1)
    mu: Array     # [S] start distribution
    # Steps of a sampled rollout (sampled rules only); truncation leaves out gamma^H of the return.
    rollout_length: int = dataclasses.field(default=0, metadata=dict(static=True))

    correct_answers = False  # rewards are graded: no set of correct answers
    tallies = False  # rollouts are several steps long: no per-action sufficient statistics

    @property
    def num_states(self) -> int:
        return self.r.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.r.shape[-1]

    @property
    def num_prompts(self) -> int:
        return 1

    @property
    def horizon(self) -> Array:
        """``1 / (1 - gamma)``: the PG gradient carries ``d(s) / (1 - gamma)``."""
        return 1.0 / (1.0 - self.gamma)

    def evaluate(self, theta: Array, tau: Array = 0.0) -> Evaluation:
        """Exact (soft) values and occupancy of ``softmax(theta)``, ``theta: [S, A]``.

        Both linear systems, ``(I - gamma P_pi) V = r_pi`` and its transpose for the occupancy,
        are solved together by ``solve_dominant``.
        """
        pi, log_pi, ent = policy(theta)
        p_pi = jnp.einsum("sa,sat->st", pi, self.P)
        r_pi = jnp.sum(pi * self.r, axis=-1) + tau * ent
        m = jnp.eye(self.num_states, dtype=p_pi.dtype) - self.gamma * p_pi
        v, occ = solve_dominant(jnp.stack([m, m.T]), jnp.stack([r_pi, self.mu]))
        occ = (1.0 - self.gamma) * occ
        q = self.r + self.gamma * jnp.einsum("sat,t->sa", self.P, v)
        adv = q - tau * log_pi - v[:, None]  # A_tau; v is V_tau from the solve
        ret_reg = jnp.sum(self.mu * v)
        ret = ret_reg - tau * self.horizon * jnp.sum(occ * ent)
        return Evaluation(pi=pi, log_pi=log_pi, ent=ent, occ=occ, q=q, v=v, adv=adv,
                          ret=ret, ret_reg=ret_reg, success=ret[None])

    def sample(self, key: Array, logits: Array, prompts: int, group: int) -> Batch:
        """``prompts`` start states from ``mu``, each with ``group`` rollouts of ``rollout_length``
        steps under ``softmax(logits)``. The REINFORCE weight of step ``t`` is
        ``gamma^t G_t = sum_{k >= t} gamma^k r_k`` and the outcome reward is the discounted return."""
        if self.rollout_length < 1:
            raise ValueError("sampling an MDP needs rollout_length >= 1 (see default_rollout_length)")
        k_start, k_steps = jax.random.split(key, 2)
        start = draw_prompts(k_start, self.mu, prompts)
        cdf_pi = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [S, A]
        cdf_next = jnp.cumsum(self.P, axis=-1)  # [S, A, S]

        def step(s, t):
            u = prng.uniform(jax.random.fold_in(k_steps, t), (2,) + s.shape, cdf_pi.dtype)
            a = inverse_cdf(u[0], cdf_pi[s])
            s_next = inverse_cdf(u[1], cdf_next[s, a])
            return s_next, (s, a, self.r[s, a])

        s0 = jnp.broadcast_to(start[:, None], (prompts, group))
        _, (state, action, reward) = jax.lax.scan(step, s0, jnp.arange(self.rollout_length))
        discount = self.gamma ** jnp.arange(self.rollout_length, dtype=reward.dtype)  # [L]
        togo = jnp.flip(jnp.cumsum(jnp.flip(discount[:, None, None] * reward, 0), axis=0), 0)
        last = lambda x: jnp.moveaxis(x, 0, -1)  # noqa: E731  [L, M, G] -> [M, G, L]
        return Batch(prompt=start, state=last(state), action=last(action), reward=togo[0],
                     togo=last(togo), discount=discount)

    def tally(self, key: Array, probs: Array, responses: int):
        raise NotImplementedError("an MDP has no tallies (tallies is False); use sample")

    def correct_mask(self) -> Array:
        raise NotImplementedError("an MDP has no correct answers (correct_answers is False)")

    def binary_rewards(self) -> bool:
        """Never: pass@k needs prompts with correct answers."""
        return False

    def prompt_weights(self) -> Array:
        """One prompt (``Evaluation.success`` is the return)."""
        return jnp.ones((1,), self.r.dtype)


def default_rollout_length(gamma: float, tail: float = 1e-3) -> int:
    """The shortest rollout whose truncation leaves out at most ``tail`` of the discount weight:
    the least ``H`` with ``gamma^H <= tail`` (1 for ``gamma = 0``)."""
    if gamma <= 0.0:
        return 1
    return max(1, int(np.ceil(np.log(tail) / np.log(gamma))))


def mdp(P, r, gamma, mu=None) -> TabularMDP:
    """A validated MDP from nested lists or arrays: ``P: [S][A][S]``, ``r: [S][A]``, ``mu: [S]``."""
    P = errors.as_array("P", P, ndim=3)
    r = errors.as_array("r", r, ndim=2)
    num_states, num_actions = r.shape
    if num_actions < 2:
        raise errors.ConfigError("r", f"needs at least 2 actions, got {num_actions}")
    if P.shape != (num_states, num_actions, num_states):
        raise errors.ConfigError("P", f"expected shape [S, A, S] = {[num_states, num_actions, num_states]} "
                                      f"to match r, got {list(P.shape)}")
    errors.probabilities("P", P)  # every P[s, a, :] is a distribution over next states
    gamma = errors.number("gamma", gamma, low=0.0, high=1.0, high_open=True)
    mu = np.full(num_states, 1.0 / num_states) if mu is None else errors.as_array("mu", mu, ndim=1)
    if mu.shape[0] != num_states:
        raise errors.ConfigError("mu", f"has {mu.shape[0]} entries for {num_states} states")
    errors.probabilities("mu", mu)
    dtype = float_dtype()
    return TabularMDP(P=jnp.asarray(P, dtype), r=jnp.asarray(r, dtype),
                      gamma=jnp.asarray(gamma, dtype), mu=jnp.asarray(mu, dtype))


def load_npz(path) -> TabularMDP:
    """An MDP from an ``.npz`` file (``numpy.savez``) holding arrays ``P``, ``r``, ``gamma`` and
    optionally ``mu``. Only plain numeric arrays are read (never pickled objects); a file that
    cannot be read, is not an ``.npz`` archive, is damaged, holds object arrays or lacks an array
    raises ``ConfigError`` for field ``path`` naming the file, and a bad array one for its own
    field (``P``, ``r``, ``gamma``, ``mu``)."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise errors.ConfigError("path", f"cannot read {name!r}: {err.strerror or err}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise errors.ConfigError("path", f"{name!r} is a single .npy array; save P, r and gamma "
                                         f"together with numpy.savez(path, P=..., r=..., gamma=...)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise errors.ConfigError("path", f"{name!r} is not an .npz file (a zip archive of arrays "
                                         f"written by numpy.savez)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("P", "r", "gamma") if k not in data.files]
            if missing:
                raise errors.ConfigError("path", f"{name!r} lacks array(s) {', '.join(missing)} "
                                                 f"(it holds {', '.join(data.files) or 'none'})")
            for key in ("P", "r", "gamma", "mu"):
                if key in data.files:
                    arrays[key] = _npz_array(data, key, name)
    except errors.ConfigError:
        raise
    except Exception as err:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError, ...
        raise errors.ConfigError("path", f"{name!r} is damaged or not a NumPy .npz file "
                                         f"({type(err).__name__}: {err})") from None
    gamma = arrays["gamma"]
    try:
        return mdp(arrays["P"], arrays["r"], float(gamma) if gamma.ndim == 0 else gamma,
                   arrays.get("mu"))
    except errors.ConfigError as err:  # the array's own field, and where it came from
        raise errors.ConfigError(err.field, f"{err.message} (array {err.field} of {name!r})") from None


def _npz_array(data, key: str, name: str) -> np.ndarray:
    """Array ``key`` of an open ``.npz`` archive, refusing object (pickled) arrays."""
    try:
        return data[key]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise errors.ConfigError("path", f"array {key} of {name!r} holds Python objects "
                                         f"(pickled data), which entropy_sim does not load: "
                                         f"loading a pickle can run code; save numeric arrays") from None


def solve_dominant(m: Array, b: Array) -> Array:
    """Solve ``m[i] x[i] = b[i]`` by Gauss-Jordan elimination without pivoting. ``[K, S, S], [K, S]
    -> [K, S]``.

    For matrices diagonally dominant by rows or by columns, as ``I - gamma P_pi`` (the
    off-diagonal entries of a row sum to at most ``gamma``) and its transpose, elimination without
    pivoting is backward stable (Wilkinson: growth factor at most 2). Written with XLA's own
    operations rather than LAPACK: jaxlib 0.10's batched LAPACK kernels on CPU can deadlock when
    called inside this package's nested loops (the run then waits forever at 0% CPU). One loop of
    ``S`` rank-1 updates vectorises over the seeds; an LU factorisation has half the arithmetic
    but needs three loops (factor, two triangular solves) and is slower here.
    """
    size = m.shape[-1]
    aug = jnp.concatenate([m, b[..., None]], axis=-1)  # [K, S, S + 1]
    rows = jnp.arange(size)

    def eliminate(k, aug):
        pivot = aug[:, k, :] / aug[:, k, k][:, None]  # [K, S + 1]
        factor = jnp.where(rows == k, 0.0, aug[:, :, k])  # [K, S]
        aug = aug - factor[:, :, None] * pivot[:, None, :]
        return jnp.where((rows == k)[None, :, None], pivot[:, None, :], aug)

    return jax.lax.fori_loop(0, size, eliminate, aug)[..., -1]


def garnet(key: Array, states: int, actions: int, branching: int, gamma: float) -> TabularMDP:
    """A random Garnet MDP: every ``(s, a)`` moves to ``branching`` distinct random states with
    probabilities from a uniform stick-breaking; rewards ``r[s, a] ~ U[0, 1]``; ``mu`` uniform.
    Pure: vmap it over keys for one MDP per seed."""
    k_next, k_prob, k_r = jax.random.split(key, 3)
    # The `branching` smallest of S iid uniforms pick a uniform random subset of next states.
    u = jax.random.uniform(k_next, (states, actions, states), F32)
    rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    cuts = jnp.sort(jax.random.uniform(k_prob, (states, actions, branching - 1), F32), axis=-1)
    edges = jnp.concatenate([jnp.zeros((states, actions, 1)), cuts,
                             jnp.ones((states, actions, 1))], axis=-1)
    probs = jnp.diff(edges, axis=-1)  # [S, A, branching], sums to 1
    P = jnp.where(rank < branching, jnp.take_along_axis(probs, jnp.minimum(rank, branching - 1),
                                                         axis=-1), 0.0)
    r = jax.random.uniform(k_r, (states, actions), F32)
    dtype = float_dtype()
    return TabularMDP(P=P.astype(dtype), r=r.astype(dtype), gamma=jnp.asarray(gamma, dtype),
                      mu=jnp.full((states,), 1.0 / states, dtype))


def chain(states: int, actions: int = 2, gamma: float = 0.9, distractor: float = 0.01) -> TabularMDP:
    """A chain with a hard-to-find reward. Start in state 0; action 0 moves one state right,
    every other action goes back to state 0. Action 0 in the last state stays there and pays 1;
    going back from state 0 pays ``distractor`` (a small sure reward that tempts the policy).
    Under the uniform policy the goal is reached with probability ``actions^-(states - 1)``."""
    P = np.zeros((states, actions, states))
    r = np.zeros((states, actions))
    for s in range(states):
        P[s, 0, min(s + 1, states - 1)] = 1.0
        P[s, 1:, 0] = 1.0
    r[states - 1, 0] = 1.0
    r[0, 1:] = distractor
    mu = np.eye(states)[0]
    return mdp(P, r, gamma, mu)


def gridworld(size: int, gamma: float = 0.9, slip: float = 0.0) -> TabularMDP:
    """A ``size x size`` grid, actions up, down, left, right (walls keep you in place); start in the
    top-left corner; the bottom-right corner is absorbing and pays 1 per step. With probability
    ``slip`` a move goes in a uniformly random direction instead."""
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    states = size * size
    goal = states - 1
    P = np.zeros((states, 4, states))
    for s in range(states):
        row, col = divmod(s, size)
        targets = []
        for dr, dc in moves:
            nr, nc = row + dr, col + dc
            targets.append(nr * size + nc if 0 <= nr < size and 0 <= nc < size else s)
        for a in range(4):
            if s == goal:
                P[s, a, goal] = 1.0
                continue
            P[s, a, targets[a]] += 1.0 - slip
            for t in targets:
                P[s, a, t] += slip / 4
    r = np.zeros((states, 4))
    r[goal, :] = 1.0
    return mdp(P, r, gamma, np.eye(states)[0])


# ----------------------------------------------------------------------------- [env] declarations

GAMMA = dict(low=0.0, high=1.0, high_open=True)


def rollout_length(gamma) -> Field:
    """The ``rollout_length`` field: steps of a sampled rollout, by default the least ``H`` with
    ``gamma^H <= 1e-3``; ``gamma(values, ctx)`` gives the discount."""
    return Field("rollout_length", "int", lambda v, ctx: default_rollout_length(gamma(v, ctx)),
                 "steps of a sampled rollout (sampled rules only); default: the least H with "
                 "gamma^H <= 1e-3", low=1)


def with_rollout(env: TabularMDP, values: dict, samples: bool) -> TabularMDP:
    """Set ``rollout_length`` only where something samples (it is static: exact rules on MDPs
    that differ only in gamma then share one compiled program)."""
    return dataclasses.replace(env, rollout_length=values["rollout_length"]) if samples else env


def _branching_at_most_states(v, ctx) -> None:
    if v["branching"] > v["states"]:
        raise errors.ConfigError("branching", f"must be <= states = {v['states']}, got "
                                              f"{v['branching']}")


# For MDPs whose discount is known once built (explicit arrays, a file, an MDP kind of your own;
# with ``prepare=with_rollout``).
ROLLOUT_LENGTH = rollout_length(lambda v, ctx: float(ctx.env.gamma))
_GENERATORS = {
    "garnet": Variant("random transitions to branching states, rewards U[0, 1]", (
        Field("states", "int", doc="number of states", low=1),
        Field("actions", "int", doc="number of actions", low=2),
        Field("branching", "int", lambda v, ctx: min(v["states"], 2), "successors of each (s, a)",
              low=1), _branching_at_most_states,
        Field("shared", "bool", False, "draw one MDP for all seeds (else one per seed)")),
        build=lambda v: Draw(garnet, dict(states=v["states"], actions=v["actions"],
                                          branching=v["branching"], gamma=v["gamma"]),
                             shared=v["shared"]),
        shape=lambda v: (v["states"], v["actions"]), binary=False),
    "chain": Variant("a chain with a hard-to-find reward at its end", (
        Field("states", "int", doc="length of the chain", low=2),
        Field("actions", "int", 2, "number of actions", low=2),
        Field("distractor", "float", 0.01, "sure reward of going back from state 0")),
        build=lambda v: chain(v["states"], v["actions"], v["gamma"], v["distractor"]),
        shape=lambda v: (v["states"], v["actions"]), binary=False),
    "gridworld": Variant("a size x size grid, reward in the far corner", (
        Field("size", "int", doc="side of the grid", low=2),
        Field("slip", "float", 0.0, "probability of a random move", low=0.0, high=1.0)),
        build=lambda v: gridworld(v["size"], v["gamma"], v["slip"]),
        shape=lambda v: (v["size"] ** 2, 4), binary=False),
}

register(EnvKind("mdp", doc="a tabular discounted MDP", prepare=with_rollout, fields=(OneOf({
    "P": Variant("with r, gamma, mu", (
        Field("P", "array", doc="transition probabilities [S][A][S']", ndim=3),
        Field("r", "array", doc="expected rewards [S][A]", ndim=2),
        Field("gamma", "float", doc="discount in [0, 1)", **GAMMA),
        Field("mu", "array", None, "start distribution (default uniform)", ndim=1), ROLLOUT_LENGTH),
        build=lambda v: mdp(v["P"], v["r"], v["gamma"], v["mu"])),
    "path": Variant("an .npz file", (
        Field("path", "path", doc=".npz file with arrays P, r, gamma and optionally mu"),
        ROLLOUT_LENGTH), build=lambda v: load_npz(v["path"])),
    "generator": Variant("garnet, chain, gridworld", (
        Field("generator", "str", doc="the MDP family", choices=tuple(_GENERATORS)),
        Field("gamma", "float", 0.9, "discount in [0, 1)", **GAMMA),
        rollout_length(lambda v, ctx: float(v["gamma"])), Cases("generator", _GENERATORS))),
}),)))

"""What every environment shares: the exact evaluation of a tabular softmax policy, and the
interface (``Environment``) the rules, the runner and the config rely on."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

if TYPE_CHECKING:
    from entropy_sim.sampling import Batch, Tally


class Evaluation(NamedTuple):
    """Exact quantities of the policy ``pi = softmax(theta)`` in one environment.

    With ``tau > 0`` the values are the entropy-regularised (soft) ones of docs/theory.md §3.6:
    ``V_tau(s) = sum_a pi(a|s) (Q_tau(s,a) - tau log pi(a|s))`` and
    ``A_tau = Q_tau - tau log pi - V_tau``; with ``tau = 0`` they are the usual ``Q, V, A``.
    """

    pi: Array       # [S, A] pi(a|s)
    log_pi: Array   # [S, A] log pi(a|s)
    ent: Array      # [S] H(pi(.|s)), natural log
    occ: Array      # [S] occupancy d(s) of docs/theory.md §1.5; sums to 1
    q: Array        # [S, A] Q_tau(s, a)
    v: Array        # [S] V_tau(s)
    adv: Array      # [S, A] A_tau(s, a)
    ret: Array      # [] return J(pi), unregularised
    ret_reg: Array  # [] regularised return J_tau(pi) = J + tau * horizon * sum_s d(s) H(s)
    success: Array  # [P] expected reward per prompt (P(correct) for binary rewards); P = 1 for MDPs

    @property
    def entropy(self) -> Array:
        """Aggregate entropy ``H(pi) = sum_s d(s) H(pi(.|s))``. ``[]``."""
        return jnp.sum(self.occ * self.ent)


def policy(theta: Array) -> tuple[Array, Array, Array]:
    """``(pi, log_pi, ent)`` of ``softmax(theta)``: ``[S, A] -> [S, A], [S, A], [S]``."""
    log_pi = jax.nn.log_softmax(theta, axis=-1)
    pi = jnp.exp(log_pi)
    ent = -jnp.sum(pi * log_pi, axis=-1)
    return pi, log_pi, ent


def soft_values(pi: Array, log_pi: Array, q: Array, tau: Array) -> tuple[Array, Array]:
    """``V_tau = E_pi[Q - tau log pi]`` and ``A_tau = Q - tau log pi - V_tau``. ``[S, A] -> [S], [S, A]``."""
    q_soft = q - tau * log_pi
    v = jnp.sum(pi * q_soft, axis=-1)
    return v, q_soft - v[:, None]


# Random problems (drawn environments, random starts) are drawn in float32 whatever the run's
# dtype and JAX's x64 mode, then cast: a float64 run of a seed solves the problem a float32 run
# of it does (up to rounding), and a float32 run draws the same numbers whether or not x64 is on.
F32 = jnp.float32


def float_dtype():
    """The default float dtype: float32, or float64 when ``jax_enable_x64`` is on."""
    return jnp.zeros(()).dtype


@runtime_checkable
class Environment(Protocol):
    """What an environment is to the rest of the package. Each is a pytree (a
    ``jax.tree_util.register_dataclass`` dataclass: arrays are leaves, shapes and modes static)
    and states every member explicitly; nothing is looked up by name.

    - ``num_states``, ``num_actions``: the policy's table ``theta: [S, A]``; ``num_prompts``: the
      length ``P`` of ``Evaluation.success`` and of ``prompt_weights()``;
    - ``horizon``: the factor of the policy gradient (``1`` for a bandit, ``1 / (1 - gamma)`` for an
      MDP, ``L`` for the token tree);
    - ``evaluate(theta, tau)``: the exact (soft) evaluation of ``softmax(theta)``;
    - ``sample(key, logits, prompts, group)``: a ``Batch`` of responses for the sampled rules;
    - ``tallies``: whether ``tally(key, probs, responses)`` gives the counts and reward sums of
      the very draws ``sample`` would make (else ``tally`` raises);
    - ``correct_answers`` (class attribute): whether ``correct_mask()`` is defined;
    - ``binary_rewards()``: every reward is 0 or 1, so pass@k is defined (concrete arrays only:
      called on the host, never inside a compiled step);
    - ``prompt_weights()``: the weights ``[P]`` of the prompts in pass@k.
    """

    correct_answers: ClassVar[bool]

    @property
    def num_states(self) -> int: ...

    @property
    def num_actions(self) -> int: ...

    @property
    def num_prompts(self) -> int: ...

    @property
    def horizon(self) -> Array: ...

    @property
    def tallies(self) -> bool: ...

    def evaluate(self, theta: Array, tau: Array = 0.0) -> Evaluation: ...

    def sample(self, key: Array, logits: Array, prompts: int, group: int) -> "Batch": ...

    def tally(self, key: Array, probs: Array, responses: int) -> "Tally": ...

    def correct_mask(self) -> Array: ...

    def binary_rewards(self) -> bool: ...

    def prompt_weights(self) -> Array: ...


def all_binary(rewards: Array) -> bool:
    """Whether every entry of ``rewards`` is 0 or 1, decided on the host in NumPy (config checks
    and the dry run compile nothing for it)."""
    values = np.asarray(rewards)
    return bool(np.all((values == 0) | (values == 1)))

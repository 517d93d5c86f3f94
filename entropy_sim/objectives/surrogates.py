"""Per-token surrogates and their clip masks: PPO's clip (with clip-higher), the plain ratio, GSPO's
sequence-level clip, CISPO's clipped weight, SAPO's soft gate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim.errors import ConfigError
from entropy_sim.objectives.pieces import EPS, EPS_HIGH, Piece, as_list
from entropy_sim.parts import Hparam

Array = jax.Array


def ppo_clip_tokens(ratio: Array, adv: Array, eps: Array,
                    eps_high: Array | None = None) -> tuple[Array, Array]:
    """``min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` per token (``eps_high`` None: ``eps``), and
    where the clipped branch is the smaller one (the token's gradient is zero there): ``r < 1 - eps``
    with ``A < 0``, or ``r > 1 + eps_high`` with ``A > 0``."""
    eps_high = eps if eps_high is None else eps_high
    clipped_value = jnp.clip(ratio, 1.0 - eps, 1.0 + eps_high) * adv
    plain = ratio * adv
    return jnp.minimum(plain, clipped_value), clipped_value < plain


def upper_eps(hp) -> Array:
    """``eps_high``, or ``eps`` where it is given as -1 (the default: a symmetric clip) or not at
    all (``hp`` built by hand). The same value as ``hp["eps"]`` there, so the default clip is
    bitwise the symmetric one."""
    if "eps_high" not in hp:
        return hp["eps"]
    return jnp.where(hp["eps_high"] < 0, hp["eps"], hp["eps_high"])


def _check_eps_high(values: dict, num_actions: int) -> None:
    for i, v in enumerate(as_list(values["eps_high"])):
        if -1.0 < v < 0.0:
            field = "algo.eps_high" + (f"[{i}]" if isinstance(values["eps_high"], list) else "")
            raise ConfigError(field, f"must be >= 0, or -1 for eps_high = eps; got {v}")


ppo_clip = Piece(
    "ppo_clip", "PPO's clipped surrogate min(r A, clip(r, 1 - eps, 1 + eps_high) A); eps_high = -1 "
                "is eps (DAPO's clip-higher: eps_high = 0.28; TRL epsilon / epsilon_high, verl "
                "clip_ratio_low / clip_ratio_high)",
    hparams=(EPS, EPS_HIGH), checks=(_check_eps_high,),
    surrogate=lambda ratio, adv, hp: ppo_clip_tokens(ratio, adv, hp["eps"], upper_eps(hp)))

plain_ratio = Piece(
    "plain_ratio", "the unclipped surrogate r A", surrogate=lambda ratio, adv, hp: (
        ratio * adv, jnp.zeros(ratio.shape, bool)))


def gspo_tokens(ratio: Array, adv: Array, eps: Array, eps_high: Array) -> tuple[Array, Array]:
    """GSPO (Zheng et al. 2025): the response's ratio ``s_i = exp((1/L) sum_t log r_t)`` on each of
    its tokens, clipped as PPO's: ``min(s_i A, clip(s_i, 1 - eps, 1 + eps_high) A)``. ``[M, G, L]``.

    The gradient flows through the mean: ``d s_i / d log pi_t = s_i / L``, and the response's
    ``L`` tokens each carry the value, so in the token mean every token of an unclipped response
    gets ``s_i A`` (``r_t A`` in PPO), and every token of a clipped one 0. This is TRL's
    ``importance_sampling_level = "sequence"`` and, for responses of equal length under the token
    mean, verl's ``gspo`` loss, whose token form ``sg(s_i) pi_t / sg(pi_t)`` has the same value and
    the same gradient (verl also caps ``log s_i`` at 10, a guard not needed here)."""
    log_s = jnp.mean(jnp.log(ratio), axis=-1, keepdims=True)
    return ppo_clip_tokens(jnp.broadcast_to(jnp.exp(log_s), ratio.shape), adv, eps, eps_high)


gspo_clip = Piece(
    "gspo_clip", "GSPO (Zheng et al. 2025): one ratio per response s = exp(mean_t log r), clipped "
                 "at sequence level min(s A, clip(s, 1 - eps, 1 + eps_high) A) on every token "
                 "(TRL importance_sampling_level = \"sequence\", verl gspo)",
    hparams=(EPS, EPS_HIGH), checks=(_check_eps_high,),
    surrogate=lambda ratio, adv, hp: gspo_tokens(ratio, adv, hp["eps"], upper_eps(hp)))


def cispo_tokens(ratio: Array, adv: Array, eps_max: Array) -> tuple[Array, Array]:
    """CISPO (MiniMax-M1, 2025): ``sg(min(r, eps_max)) A log r`` per token, whose gradient in
    ``log pi`` is ``min(r, eps_max) A``: the importance weight is capped, never the gradient cut.
    The value differs from the paper's ``sg(min(r, eps_max)) A log pi`` by the constant
    ``sg(.) A log pi_old`` (same gradient; 0 on-policy). Flags tokens whose weight was capped
    (``r > eps_max``, ``A != 0``)."""
    weight = jax.lax.stop_gradient(jnp.minimum(ratio, eps_max))
    return weight * adv * jnp.log(ratio), (ratio > eps_max) & (adv != 0)


cispo_weight = Piece(
    "cispo_weight", "CISPO (MiniMax-M1 2025): sg(min(r, eps_max)) A log pi; the weight capped above "
                    "only (TRL loss_type = \"cispo\" with epsilon_high = eps_max; verl's cispo also "
                    "clamps below at 1 - clip_ratio_low)",
    hparams=(Hparam("eps_max", 5.0, "cap of CISPO's importance weight (ScaleRL, TRL: 5)",
                    low=1.0),),
    surrogate=lambda ratio, adv, hp: cispo_tokens(ratio, adv, hp["eps_max"]))


def sapo_tokens(ratio: Array, adv: Array, tau_pos: Array, tau_neg: Array) -> tuple[Array, Array]:
    """SAPO (Gao et al. 2025): ``f(r) A`` with the soft gate ``f(r) = sigma(tau (r - 1)) 4 / tau``,
    ``tau = tau_pos`` where ``A > 0``, else ``tau_neg``. ``d f / d log pi = 4 sigma (1 - sigma) r``:
    exactly ``A`` at ``r = 1`` (the policy gradient on-policy), decaying smoothly as ``r`` leaves 1
    instead of dropping to 0 at a clip boundary. Nothing is clipped."""
    tau = jnp.where(adv > 0, tau_pos, tau_neg)
    return jax.nn.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau * adv, jnp.zeros(ratio.shape, bool)


sapo_gate = Piece(
    "sapo_gate", "SAPO (Gao et al. 2025): sigma(tau (r - 1)) 4 / tau x A, tau = tau_pos for A > 0, "
                 "tau_neg otherwise: a soft gate in place of the clip (as TRL loss_type = "
                 "\"sapo\" and verl sapo)",
    hparams=(Hparam("tau_pos", 1.0, "SAPO gate temperature for A > 0", low=0.0, low_open=True),
             Hparam("tau_neg", 1.05, "SAPO gate temperature for A <= 0", low=0.0, low_open=True)),
    surrogate=lambda ratio, adv, hp: sapo_tokens(ratio, adv, hp["tau_pos"], hp["tau_neg"]))

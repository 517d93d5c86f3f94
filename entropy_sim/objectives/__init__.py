"""The policy-optimisation family (GRPO and the methods built on it) as a chain of small pieces.

One step of a rule built here (docs/theory.md §4 and §5):

    batch      prompts x group responses drawn from pi_old = pi  (env.sample, or Piece.draw)
    reward     shapers of the responses' rewards        [M, G]             (Piece.reward)
    advantage  an estimator, then shapers               [M, G, L]          (Piece.advantage)
    prepare    anything decided once per step (AEPO's second batch, an entropy gate) (Piece.prepare)
    epochs x, mini_batches x (each on its prompts):
               r = pi / pi_old per token
               surrogate: per-token objective and clip mask                (Piece.surrogate)
               token selection and masks                                   (Piece.select)
               token mean, plus bonuses and regularisers                   (Piece.bonus)
               gradient, optax step
    update     what a piece carries to the next step (a KL reference, a coefficient) (Piece.update)

A ``Piece`` declares its hyperparameters, columns and checks (``entropy_sim.parts``) and fills
one hook; ``policy_rule`` chains pieces into an update rule with the signature of every rule
(``entropy_sim.rules``). GRPO is ``policy_rule("grpo", ..., group_normalised, ppo_clip)``; its
variants add one piece each, and any combination works without new code:

    policy_rule("clip_cov_bonus", "Clip-Cov with an entropy bonus",
                group_normalised, ppo_clip, clip_cov_tokens, entropy_bonus)

Pieces see a ``Context`` (the batch, ``pi_old`` and its exact evaluation) and, inside the
objective, the ``Tokens`` of the current logits. Every array of a batch is ``[M, G, L]``: ``M``
prompts, ``G`` responses each, ``L`` tokens per response (1 for bandits).

The pieces live by kind: ``pieces`` (the vocabulary: ``Context``, ``Tokens``, ``Piece`` and the
shared declarations), ``advantages``, ``surrogates``, ``selections`` (token selection and masks),
``regularisers`` (bonuses, KL to a reference, adaptive entropy, AEPO) and ``rule``
(``policy_rule``). Every public name is re-exported here.
"""

from entropy_sim.objectives.advantages import (batch_normalised, dynamic_sampling, entropy_shaping,
                                               group_centred, group_normalised, informative_first,
                                               sign_weighted, signed_reward)
from entropy_sim.objectives.pieces import (BATCH_COLUMNS, EPS, EPS_HIGH, ETA, GROUP_CHECKS,
                                           GROUP_OPTIONS, HOOKS, Context, Piece, Tokens, per_token)
from entropy_sim.objectives.regularisers import (KL_ESTIMATORS, EntropyControl, Reference,
                                                 RegBatch, adaptive_entropy, aepo_regulariser,
                                                 entropy_bonus, exact_kl, kl_estimate,
                                                 reference_kl, token_mean_entropy)
from entropy_sim.objectives.rule import mini_batch, policy_rule, policy_step, with_defaults
from entropy_sim.objectives.selections import (COV_TOKENS, FRAC, centred_product, clip_cov_tokens,
                                               drift, dual_clip, forking_tokens, kl_cov_tokens,
                                               quantile_threshold, rank)
from entropy_sim.objectives.surrogates import (cispo_tokens, cispo_weight, gspo_clip, gspo_tokens,
                                               plain_ratio, ppo_clip, ppo_clip_tokens, sapo_gate,
                                               sapo_tokens, upper_eps)

__all__ = [
    "BATCH_COLUMNS", "COV_TOKENS", "EPS", "EPS_HIGH", "ETA", "FRAC", "GROUP_CHECKS",
    "GROUP_OPTIONS", "HOOKS", "KL_ESTIMATORS", "Context", "EntropyControl", "Piece", "Reference",
    "RegBatch", "Tokens", "adaptive_entropy", "aepo_regulariser", "batch_normalised",
    "centred_product", "cispo_tokens", "cispo_weight", "clip_cov_tokens", "drift", "dual_clip",
    "dynamic_sampling", "entropy_bonus", "entropy_shaping", "exact_kl", "forking_tokens",
    "group_centred", "group_normalised", "gspo_clip", "gspo_tokens", "informative_first",
    "kl_cov_tokens", "kl_estimate", "mini_batch", "per_token", "plain_ratio", "policy_rule",
    "policy_step", "ppo_clip", "ppo_clip_tokens", "quantile_threshold", "rank", "reference_kl",
    "sapo_gate", "sapo_tokens", "sign_weighted", "signed_reward", "token_mean_entropy",
    "upper_eps", "with_defaults",
]

"""Update rules: how the logits move in one step.

- ``exact``: exact rules written out (PG, NPG, entropy-regularised, temperature REINFORCE, trust
  regions), one pure function each.
- ``sampled``: REINFORCE-type rules from a sampled batch (REINFORCE with baselines, sampled NPG).
- ``registry``: every rule's function and declarations (``RULES``); ``register`` adds your own.
  The GRPO family's rules are chains of pieces from ``entropy_sim.objectives``, one line each.
"""

from entropy_sim.rules import exact, sampled
from entropy_sim.rules.registry import RULES, register

__all__ = ["RULES", "exact", "register", "sampled"]

"""Environments: what is learned. Each is a pytree whose ``evaluate(theta, tau)`` is exact and
which implements ``Environment``; each kind registers its ``[env]`` fields and its build function
(``registry.py``), so a new kind is one module, or ``register`` in a script."""

from entropy_sim.envs.bandit import ContextualBandit, bandit, contextual_bandit, random_bandit
from entropy_sim.envs.base import Environment, Evaluation
from entropy_sim.envs.registry import KINDS, Draw, EnvKind, build, kind, register
from entropy_sim.envs.mdp import (ROLLOUT_LENGTH, TabularMDP, chain, default_rollout_length, garnet,
                                  gridworld, load_npz, mdp, with_rollout)
from entropy_sim.envs.token_tree import TokenTree, all_sequences, random_token_tree, token_tree
from entropy_sim.parts import Field  # the declaration of a field, for kinds of your own

Env = ContextualBandit | TabularMDP | TokenTree

__all__ = [
    "KINDS", "ROLLOUT_LENGTH", "ContextualBandit", "Draw", "Env", "EnvKind", "Environment",
    "Evaluation", "Field", "TabularMDP", "TokenTree", "all_sequences", "bandit", "build", "chain",
    "contextual_bandit", "default_rollout_length", "garnet", "gridworld", "kind", "load_npz", "mdp",
    "random_bandit", "random_token_tree", "register", "token_tree", "with_rollout",
]

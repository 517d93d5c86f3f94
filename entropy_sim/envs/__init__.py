"""Environments: what is learned. Each is a pytree whose ``evaluate(theta, tau)`` is exact and
which implements ``Environment``; each kind registers its ``[env]`` fields and its build function
(``registry.py``), so a new kind is one module, or ``register`` in a script."""

from entropy_sim.envs.bandit import ContextualBandit, bandit, contextual_bandit, random_bandit
from entropy_sim.envs.base import Environment, Evaluation
from entropy_sim.envs.registry import KINDS, Draw, EnvKind, build, kind, register
from entropy_sim.envs.mdp import (TabularMDP, chain, default_rollout_length, garnet, gridworld,
                                  load_npz, mdp)
from entropy_sim.envs.token_tree import TokenTree, all_sequences, random_token_tree, token_tree

Env = ContextualBandit | TabularMDP | TokenTree

__all__ = [
    "KINDS", "ContextualBandit", "Draw", "Env", "EnvKind", "Environment", "Evaluation", "TabularMDP",
    "TokenTree", "all_sequences", "bandit", "build", "chain", "contextual_bandit",
    "default_rollout_length", "garnet", "gridworld", "kind", "load_npz", "mdp", "random_bandit",
    "random_token_tree", "register", "token_tree",
]

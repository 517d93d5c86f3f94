"""Environments: what is learned. Each is a pytree whose ``evaluate(theta, tau)`` is exact."""

from entropy_sim.envs.bandit import ContextualBandit, bandit, contextual_bandit, random_bandit
from entropy_sim.envs.base import Environment, Evaluation
from entropy_sim.envs.mdp import (TabularMDP, chain, default_rollout_length, garnet, gridworld,
                                  load_npz, mdp)
from entropy_sim.envs.token_tree import TokenTree, all_sequences, random_token_tree, token_tree

Env = ContextualBandit | TabularMDP | TokenTree

__all__ = [
    "ContextualBandit", "Env", "Environment", "Evaluation", "TabularMDP", "TokenTree", "all_sequences", "bandit",
    "chain", "contextual_bandit", "default_rollout_length", "garnet", "gridworld", "load_npz", "mdp",
    "random_bandit", "random_token_tree", "token_tree",
]

"""A toy autoregressive language model: a tree of prefixes with a verifiable reward at the leaves.

Vocabulary ``V``, response length ``L``, ``P`` prompts. The states of one prompt are its prefixes
``o_<t`` for ``t = 0..L-1`` (``(V^L - 1) / (V - 1)`` of them), actions are next tokens, transitions
are deterministic, and a complete response ``o`` earns reward 1 if it is in the prompt's set of
correct answers, else 0; ``gamma = 1``. docs/theory.md §1.6.

Layout of ``theta: [S, V]`` with ``S = P * num_nodes``: prompt-major; within a prompt, level ``t``
(prefixes of length ``t``) fills rows ``offset[t] .. offset[t] + V^t`` and the prefix
``(o_0, ..., o_{t-1})`` is row ``offset[t] + sum_i o_i V^(t-1-i)``, so the children of a level-``t``
row ``i`` are the level-``t+1`` rows ``i * V + a``: a reshape, no index tables.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from entropy_sim import errors, prng
from entropy_sim.envs.bandit import RHO, SHARED, rho_matches
from entropy_sim.envs.base import F32, Evaluation, all_binary, float_dtype, policy
from entropy_sim.envs.registry import Draw, EnvKind, register
from entropy_sim.parts import Field, OneOf, Variant
from entropy_sim.sampling import Batch, draw_prompts, inverse_cdf

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenTree:
    """``P`` prompts over responses of ``length`` tokens from a vocabulary of ``vocab``."""

    reward: Array  # [P, V^L] reward of each complete response, in sequence-index order
    rho: Array     # [P] prompt weights, sum to 1
    vocab: int = dataclasses.field(metadata=dict(static=True))
    length: int = dataclasses.field(metadata=dict(static=True))

    correct_answers = True  # the tokens that can still lead to a correct response
    tallies = False  # responses are several tokens long: no per-action sufficient statistics

    @property
    def num_prompts(self) -> int:
        return self.reward.shape[-2]

    @property
    def num_nodes(self) -> int:
        """Prefixes per prompt: ``1 + V + ... + V^(L-1)``."""
        return sum(self.vocab ** t for t in range(self.length))

    @property
    def num_states(self) -> int:
        return self.num_prompts * self.num_nodes

    @property
    def num_actions(self) -> int:
        return self.vocab

    @property
    def horizon(self) -> Array:
        """Every response has ``L`` tokens: the PG gradient carries ``L * d(s)`` = visits."""
        return jnp.asarray(self.length, self.reward.dtype)

    def _levels(self, x: Array) -> list[Array]:
        """Split ``[S, ...]`` rows into per-level blocks ``[P, V^t, ...]``, ``t = 0..L-1``."""
        x = x.reshape((self.num_prompts, self.num_nodes) + x.shape[1:])
        out, start = [], 0
        for t in range(self.length):
            out.append(x[:, start:start + self.vocab ** t])
            start += self.vocab ** t
        return out

    def _flatten(self, levels: list[Array]) -> Array:
        """Inverse of ``_levels``: ``[P, V^t, ...]`` blocks back to ``[S, ...]`` rows."""
        x = jnp.concatenate(levels, axis=1)
        return x.reshape((self.num_states,) + x.shape[2:])

    def evaluate(self, theta: Array, tau: Array = 0.0) -> Evaluation:
        """Exact evaluation by backward induction (values) and a forward pass (visit
        probabilities), ``theta: [S, V]``. Cost ``O(S V)``."""
        pi, log_pi, ent = policy(theta)
        pi_l, log_pi_l = self._levels(pi), self._levels(log_pi)
        num_p, vocab = self.num_prompts, self.vocab

        q_l, v_l = [None] * self.length, [None] * self.length
        value = self.reward  # [P, V^(t+1)] values of the level below
        for t in reversed(range(self.length)):
            q_l[t] = value.reshape(num_p, vocab ** t, vocab)
            v_l[t] = jnp.sum(pi_l[t] * (q_l[t] - tau * log_pi_l[t]), axis=-1)
            value = v_l[t]

        reach_l = [jnp.ones((num_p, 1), pi.dtype)]
        for t in range(self.length - 1):
            reach_l.append((reach_l[t][..., None] * pi_l[t]).reshape(num_p, vocab ** (t + 1)))
        reach = self._flatten(reach_l)  # [S] probability of visiting each prefix
        prompt_w = jnp.repeat(self.rho, self.num_nodes, total_repeat_length=self.num_states)
        occ = prompt_w * reach / self.length

        q = self._flatten(q_l)
        v = self._flatten(v_l)
        adv = q - tau * log_pi - v[:, None]
        v_root = v_l[0][:, 0]  # [P]
        # Soft root value = P(correct) + tau * expected sum of per-token entropies.
        ent_visits = jnp.sum((reach * ent).reshape(num_p, self.num_nodes), axis=-1)
        success = v_root - tau * ent_visits
        return Evaluation(pi=pi, log_pi=log_pi, ent=ent, occ=occ, q=q, v=v, adv=adv,
                          ret=jnp.sum(self.rho * success), ret_reg=jnp.sum(self.rho * v_root), success=success)

    def sample(self, key: Array, logits: Array, prompts: int, group: int) -> Batch:
        """``prompts`` prompts from ``rho``, each with ``group`` complete responses drawn token by
        token from ``softmax(logits)``. ``logits: [S, V]``; one uniform per token."""
        k_prompt, k_tokens = jax.random.split(key, 2)
        prompt = draw_prompts(k_prompt, self.rho, prompts)  # [M]
        u = prng.uniform(k_tokens, (self.length, prompts, group), logits.dtype)
        cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
        node = jnp.zeros((prompts, group), jnp.int32)  # index of the prefix within its level
        root = (prompt * self.num_nodes)[:, None]
        states, actions, offset = [], [], 0
        for t in range(self.length):
            row = root + offset + node
            token = inverse_cdf(u[t], cdf[row])
            states.append(row)
            actions.append(token)
            node = node * self.vocab + token
            offset += self.vocab ** t
        reward = self.reward[prompt[:, None], node]  # [M, G]
        return Batch(prompt=prompt, state=jnp.stack(states, -1), action=jnp.stack(actions, -1),
                     reward=reward, togo=jnp.broadcast_to(reward[..., None], node.shape + (self.length,)),
                     discount=jnp.ones((self.length,), reward.dtype))

    def correct_mask(self) -> Array:
        """``[S, V]`` True where the next token can still lead to a correct answer."""
        best = self.reward
        mask_l = [None] * self.length
        for t in reversed(range(self.length)):
            child = best.reshape(self.num_prompts, self.vocab ** t, self.vocab)
            mask_l[t] = child > 0
            best = jnp.max(child, axis=-1)
        return self._flatten(mask_l)

    def optimal_return(self) -> Array:
        """``J* = sum_p rho(p) max_o R(p, o)``. ``[]``."""
        return jnp.sum(self.rho * jnp.max(self.reward, axis=-1))

    def tally(self, key: Array, probs: Array, responses: int):
        raise NotImplementedError("a token tree has no tallies (tallies is False); use sample")

    def binary_rewards(self) -> bool:
        return all_binary(self.reward)

    def prompt_weights(self) -> Array:
        return self.rho

    def sequence_index(self, tokens) -> int:
        """Index of a complete response (list of ``L`` token ids) in ``reward``'s last axis."""
        return sequence_index(tokens, self.vocab)


def sequence_index(tokens, vocab: int) -> int:
    """Index of the response ``tokens`` (base-``vocab`` digits, first token most significant)."""
    return int(sum(int(o) * vocab ** (len(tokens) - 1 - i) for i, o in enumerate(tokens)))


def token_tree(vocab: int, length: int, answers, rho=None) -> TokenTree:
    """A validated token tree; ``answers[p]`` lists the correct responses of prompt ``p``, each a
    list of ``length`` token ids in ``[0, vocab)``."""
    vocab = errors.integer("vocab", vocab, minimum=2)
    length = errors.integer("length", length, minimum=1)
    if not isinstance(answers, (list, tuple)) or not answers:
        raise errors.ConfigError("answers", "expected a non-empty list (one list of answers per prompt)")
    reward = np.zeros((len(answers), vocab ** length))
    for p, prompt_answers in enumerate(answers):
        if not isinstance(prompt_answers, (list, tuple)):
            raise errors.ConfigError(f"answers[{p}]", "expected a list of responses")
        for j, seq in enumerate(prompt_answers):
            seq = errors.as_array(f"answers[{p}][{j}]", seq, ndim=1, dtype=np.float64)
            if seq.shape[0] != length or (seq != np.round(seq)).any() or (seq < 0).any() \
                    or (seq >= vocab).any():
                raise errors.ConfigError(f"answers[{p}][{j}]", f"expected {length} token ids in "
                                                               f"[0, {vocab}), got {seq.tolist()}")
            reward[p, sequence_index(seq, vocab)] = 1.0
    num_prompts = reward.shape[0]
    rho = np.full(num_prompts, 1.0 / num_prompts) if rho is None else errors.as_array("rho", rho, ndim=1)
    if rho.shape[0] != num_prompts:
        raise errors.ConfigError("rho", f"has {rho.shape[0]} entries for {num_prompts} prompts")
    errors.probabilities("rho", rho)
    dtype = float_dtype()
    return TokenTree(reward=jnp.asarray(reward, dtype), rho=jnp.asarray(rho, dtype),
                     vocab=vocab, length=length)


def random_token_tree(key: Array, vocab: int, length: int, prompts: int = 1,
                      num_correct: int = 1, rho=None) -> TokenTree:
    """A token tree whose prompts each have ``num_correct`` distinct correct responses drawn
    uniformly at random. Pure: vmap it over keys for one tree per seed."""
    u = jax.random.uniform(key, (prompts, vocab ** length), F32)
    rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    reward = (rank < num_correct).astype(float_dtype())
    rho = jnp.full((prompts,), 1.0 / prompts) if rho is None else jnp.asarray(rho)
    return TokenTree(reward=reward, rho=rho.astype(float_dtype()), vocab=vocab, length=length)


def all_sequences(vocab: int, length: int) -> np.ndarray:
    """Every response in sequence-index order. ``[V^L, L]`` int."""
    return np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int64).reshape(
        vocab ** length, length)


# ----------------------------------------------------------------------------- [env] declarations

def _exactly_evaluable(v, ctx) -> None:
    if v["vocab"] ** v["length"] > 2 ** 22:
        raise errors.ConfigError("length", f"vocab^length = {v['vocab'] ** v['length']} responses "
                                           f"is too many for exact evaluation (limit 2^22)")


def _at_most_every_response(v, ctx) -> None:
    if v["num_correct"] > v["vocab"] ** v["length"]:
        raise errors.ConfigError("num_correct", f"must be <= vocab^length = "
                                                f"{v['vocab'] ** v['length']}")


register(EnvKind("token_tree", doc="a toy language model: responses of length tokens", fields=(
    Field("vocab", "int", doc="vocabulary size V", low=2),
    Field("length", "int", doc="tokens per response L", low=1), _exactly_evaluable,
    OneOf({"answers": Variant("explicit", (
        Field("answers", "list", doc="per prompt, its correct responses (each length token ids)"),
        RHO), build=lambda v: token_tree(v["vocab"], v["length"], v["answers"], v["rho"]))},
        fallback=Variant("correct responses drawn per seed", (
            Field("prompts", "int", 1, "number of prompts", low=1),
            Field("num_correct", "int", 1, "correct responses per prompt", low=1),
            _at_most_every_response, RHO, rho_matches("prompts"), SHARED),
            build=lambda v: Draw(random_token_tree, dict(
                vocab=v["vocab"], length=v["length"], prompts=v["prompts"],
                num_correct=v["num_correct"], rho=v["rho"]), shared=v["shared"]),
            shape=lambda v: (v["prompts"] * sum(v["vocab"] ** t for t in range(v["length"])),
                             v["vocab"]), binary=True)))))

"""The policy-optimisation pieces (``objectives.py``), each on a hand-built batch, against
expectations written out here; and their compositions.

The batch: 2 prompts (states 0 and 1 of a 2 x 3 logit table, one token per response) x 4
responses, with fixed actions and rewards. A stand-in environment hands it to the rule, so no
random draw is replayed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_sim import objectives as ob
from entropy_sim import optim
from entropy_sim.envs import contextual_bandit
from entropy_sim.parts import Hparam
from entropy_sim.sampling import Batch

jax.config.update("jax_enable_x64", True)

ACTION = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
REWARD = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
THETA = np.array([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
R = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def fixed_batch() -> Batch:
    state = np.repeat(np.arange(2)[:, None], 4, axis=1)[..., None]
    return Batch(prompt=jnp.arange(2), state=jnp.asarray(state), action=jnp.asarray(ACTION[..., None]),
                 reward=jnp.asarray(REWARD), togo=jnp.asarray(REWARD[..., None]),
                 discount=jnp.ones(1))


@dataclasses.dataclass(frozen=True)
class FixedBatchEnv:
    """A contextual bandit whose ``sample`` always returns ``fixed_batch()``."""

    inner: object

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, key, logits, prompts, group):
        return fixed_batch()


ENV = FixedBatchEnv(contextual_bandit(R.tolist(), [0.5, 0.5]))


def group_adv() -> np.ndarray:
    """(R - mean) / sample std per group, 0 for a group of equal rewards. [2, 4]."""
    out = np.zeros_like(REWARD)
    r = REWARD[0]
    out[0] = (r - r.mean()) / r.std(ddof=1)
    return out


def context(theta=THETA) -> ob.Context:
    ev = ENV.evaluate(jnp.asarray(theta), 0.0)
    b = fixed_batch()
    return ob.Context(jnp.asarray(theta), ev, ENV, b, ev.log_pi[b.state, b.action], 2, 4)


def step(rule: str, pieces, eta=0.5, epochs=1, **hp):
    """One sgd step of the chain ``pieces`` on the fixed batch: ``(theta_next, info)``."""
    spec = ob.policy_rule(rule, "test", *pieces)
    values = {**spec.defaults, "eta": eta, **hp}
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in values.items()}
    theta = jnp.asarray(THETA)
    opt = optim.make_optimizer("sgd", hp)
    theta_next, _, info = spec.fn(theta, opt.init(theta), ENV.evaluate(theta, 0.0), ENV, hp,
                                  jax.random.PRNGKey(0), opt, batch=2, group=4, epochs=epochs)
    return np.asarray(theta_next), info


def score_direction(weights: np.ndarray) -> np.ndarray:
    """``(1/N) sum_i w_i (e_{a_i} - pi(.|s_i))`` over the batch's tokens: the gradient of the
    token mean of ``w_i log pi(a_i|s_i)``. [2, 3]."""
    pi = softmax(THETA)
    out = np.zeros_like(THETA)
    for s in range(2):
        for i in range(4):
            e = np.eye(3)[ACTION[s, i]]
            out[s] += weights[s, i] * (e - pi[s])
    return out / 8


def test_group_normalised_advantage_is_the_group_z_score_on_every_token():
    adv = ob.group_normalised.advantage(None, context(), {})
    assert adv.shape == (2, 4, 1)
    np.testing.assert_allclose(adv[..., 0], group_adv(), rtol=1e-12)
    assert np.all(np.asarray(adv[1]) == 0.0)  # all rewards equal: exactly zero


def test_ppo_clip_takes_the_smaller_branch_and_flags_where_the_clip_acts():
    ratio = jnp.array([0.5, 1.0, 1.5, 0.5, 1.0, 1.5])
    adv = jnp.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    value, clipped = ob.ppo_clip.surrogate(ratio, adv, {"eps": 0.2})
    # A > 0: min(r, clip(r)) A; A < 0: max(r, clip(r)) |A| with the sign.
    np.testing.assert_allclose(value, [0.5, 1.0, 1.2, -0.8, -1.0, -1.5])
    np.testing.assert_array_equal(clipped, [False, False, True, True, False, False])


def test_plain_ratio_is_r_times_a_and_never_clips():
    value, clipped = ob.plain_ratio.surrogate(jnp.array([0.5, 2.0]), jnp.array([2.0, -1.0]), {})
    np.testing.assert_allclose(value, [1.0, -2.0])
    assert not np.any(clipped)


def test_entropy_shaping_adds_the_capped_entropy_term():
    ctx = context()
    adv = jnp.asarray(group_adv()[..., None])
    shaped = ob.entropy_shaping.advantage(adv, ctx, {"beta": 0.4, "kappa": 2.0})
    pi = softmax(THETA)
    ent = -(pi * np.log(pi)).sum(-1)  # [2]
    expected = group_adv() + np.minimum(0.4 * ent[:, None], np.abs(group_adv()) / 2.0)
    np.testing.assert_allclose(shaped[..., 0], expected, rtol=1e-12)


def tokens(ctx, logp=None):
    logp = ctx.logp_old if logp is None else logp
    adv = jnp.asarray(group_adv()[..., None])
    value, clipped = ob.ppo_clip.surrogate(jnp.exp(logp - ctx.logp_old), adv, {"eps": 0.2})
    return ob.Tokens(value, clipped, logp, jnp.exp(logp - ctx.logp_old), adv)


def covariance_products(ctx) -> np.ndarray:
    logp = np.asarray(ctx.logp_old)[..., 0]
    return (logp - logp.mean()) * (group_adv() - group_adv().mean())


def test_clip_cov_detaches_a_random_eligible_token_within_the_window():
    ctx = context()
    c = covariance_products(ctx)
    w_low, w_high = 0.13, 0.2  # responses 1 and 2 of the first group (c = 0.1348 each)
    eligible = (c > w_low) & (c < w_high)
    assert eligible.sum() == 2
    hp = {"frac": 0.125, "w_low": w_low, "w_high": w_high}  # floor(0.125 * 8) = 1 token
    chosen = []
    for seed in range(20):
        tok, aux = ob.clip_cov_tokens.select(tokens(ctx), ctx, hp, jax.random.PRNGKey(seed))
        zeroed = np.asarray(tok.value[..., 0] == 0) & (np.asarray(tokens(ctx).value[..., 0]) != 0)
        assert aux["cov_tokens"] == 1 and zeroed.sum() == 1
        assert eligible[zeroed].all()
        chosen.append(tuple(np.argwhere(zeroed)[0]))
    assert len(set(chosen)) == 2  # both eligible tokens get picked over 20 keys
    # An empty window detaches nothing (the max(1, .) floor applies to the eligible only).
    tok, aux = ob.clip_cov_tokens.select(tokens(ctx), ctx, {**hp, "w_low": 50.0, "w_high": 60.0},
                                         jax.random.PRNGKey(0))
    assert aux["cov_tokens"] == 0
    np.testing.assert_array_equal(tok.value, tokens(ctx).value)


def test_kl_cov_penalises_the_top_covariance_tokens_by_beta_times_the_drift():
    ctx = context()
    c = covariance_products(ctx).ravel()
    top2 = np.argsort(-c)[:2]
    hp = {"frac": 0.25, "beta": 3.0}  # floor(0.25 * 8) = 2 tokens
    on_policy, aux = ob.kl_cov_tokens.select(tokens(ctx), ctx, hp, None)
    assert aux["cov_tokens"] == 2
    np.testing.assert_array_equal(on_policy.value, tokens(ctx).value)  # zero drift: no penalty
    shifted = ctx.logp_old + 0.1
    tok, _ = ob.kl_cov_tokens.select(tokens(ctx, shifted), ctx, hp, None)
    penalty = (np.asarray(tokens(ctx, shifted).value) - np.asarray(tok.value)).ravel()
    expected = np.zeros(8)
    expected[top2] = 3.0 * 0.1
    np.testing.assert_allclose(penalty, expected, atol=1e-12)
    assert not np.any(tok.clipped)


def test_entropy_bonus_is_lambda_times_the_token_mean_entropy():
    ctx = context()
    log_pi = jax.nn.log_softmax(jnp.asarray(THETA), axis=-1)
    pi = softmax(THETA)
    ent = -(pi * np.log(pi)).sum(-1)
    value = ob.entropy_bonus.bonus(log_pi, ctx, {"lambda": 0.3}, None)
    np.testing.assert_allclose(value, 0.3 * ent.mean(), rtol=1e-12)  # 4 tokens in each state


def test_grpo_step_on_the_fixed_batch_is_the_advantage_weighted_score():
    theta_next, info = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=0.5)
    np.testing.assert_allclose(theta_next, THETA + 0.5 * score_direction(group_adv()), rtol=1e-12)
    assert info["clip_frac"] == 0.0 and info["zero_adv_groups"] == 0.5
    np.testing.assert_allclose(info["batch_reward"], REWARD.mean())


def test_a_bonus_adds_its_own_gradient_to_the_step():
    """Clip-Cov plus an entropy bonus, a combination no rule spells out: the step is Clip-Cov's
    (here: nothing eligible, so GRPO's) plus eta times the bonus's gradient."""
    pieces = (ob.group_normalised, ob.ppo_clip, ob.clip_cov_tokens, ob.entropy_bonus)
    theta_next, info = step("combo", pieces, eta=0.5, **{"lambda": 0.2, "w_low": 50.0,
                                                         "w_high": 60.0})
    states = np.repeat(np.arange(2), 4)

    def bonus(theta):
        log_pi = jax.nn.log_softmax(theta, axis=-1)
        return 0.2 * jnp.mean(-jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)[states])

    expected = THETA + 0.5 * (score_direction(group_adv()) + np.asarray(jax.grad(bonus)(THETA)))
    np.testing.assert_allclose(theta_next, expected, rtol=1e-12)
    assert info["cov_tokens"] == 0


def test_zero_weight_pieces_leave_grpo_bitwise_unchanged():
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    reg, _ = step("reg", (ob.group_normalised, ob.ppo_clip, ob.entropy_bonus), **{"lambda": 0.0})
    np.testing.assert_array_equal(base, reg)


def test_two_epochs_move_the_ratio_and_let_the_clip_act():
    _, one = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=20.0, epochs=1)
    _, two = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=20.0, epochs=2)
    assert one["clip_frac"] == 0.0 and two["clip_frac"] > 0.0


def test_a_chain_declares_the_union_of_its_pieces():
    spec = ob.policy_rule("x", "x", ob.group_normalised, ob.ppo_clip, ob.clip_cov_tokens,
                          ob.entropy_bonus)
    assert [h.name for h in spec.hparams] == ["eta", "eps", "frac", "w_low", "w_high", "lambda"]
    assert spec.column_names == ("entropy_batch", "batch_reward", "zero_adv_groups", "clip_frac",
                                 "cov_tokens")
    assert spec.sampled and [o.name for o in spec.options] == ["batch", "group", "epochs"]


def test_chains_that_cannot_work_are_refused_when_composed():
    with pytest.raises(ValueError, match="exactly one piece must give the surrogate"):
        ob.policy_rule("x", "x", ob.group_normalised)
    with pytest.raises(ValueError, match="exactly one piece must give the surrogate"):
        ob.policy_rule("x", "x", ob.group_normalised, ob.ppo_clip, ob.plain_ratio)
    with pytest.raises(ValueError, match="estimate the advantage"):
        ob.policy_rule("x", "x", ob.ppo_clip)
    # Entropy-Adv's beta and KL-Cov's beta mean different things: composing both needs a rename.
    with pytest.raises(ValueError, match="'beta'"):
        ob.policy_rule("x", "x", ob.group_normalised, ob.ppo_clip, ob.entropy_shaping,
                       ob.kl_cov_tokens)
    renamed = dataclasses.replace(ob.kl_cov_tokens, hparams=(
        ob.FRAC, Hparam("kl_beta", 1.0, "KL weight on the selected tokens", low=0.0)))
    assert "kl_beta" in [h.name for h in ob.policy_rule(
        "x", "x", ob.group_normalised, ob.ppo_clip, ob.entropy_shaping, renamed).hparams]


def test_dr_grpo_expected_step_is_one_minus_one_over_g_times_exact_pg():
    """Dr. GRPO's advantage R - mean(R) (no std) on one epoch: E[(R_i - mean_j R_j) grad log
    pi(a_i)] = (1 - 1/G) E[R grad log pi] (the other responses are independent of a_i and
    E[grad log pi] = 0), so the expected logit step is (1 - 1/G) times exact PG's,
    rho(s) pi(a|s) (r(s, a) - V(s)), checked by Monte Carlo within 4.5 standard errors."""
    from entropy_sim.algorithms import RULES

    env = contextual_bandit(R.tolist(), [0.3, 0.7])
    theta = jnp.asarray(THETA)
    hp = {"eta": jnp.asarray(1.0, jnp.float64), "eps": jnp.asarray(0.2, jnp.float64)}
    opt = optim.make_optimizer("sgd", hp)
    ev = env.evaluate(theta, 0.0)

    def direction(key):
        theta_next, _, _ = RULES["dr_grpo"].fn(theta, opt.init(theta), ev, env, hp, key, opt,
                                               batch=4, group=4, epochs=1)
        return theta_next - theta

    steps = np.asarray(jax.jit(jax.vmap(direction))(jax.random.split(jax.random.PRNGKey(3), 40_000)))
    pi = softmax(THETA)
    expected = (1 - 1 / 4) * np.array([0.3, 0.7])[:, None] * pi * (R - (pi * R).sum(-1, keepdims=True))
    se = steps.std(0, ddof=1) / np.sqrt(len(steps))
    assert np.all(np.abs(steps.mean(0) - expected) < 4.5 * se + 1e-12), (steps.mean(0), expected, se)
    # The factor is resolved: the mean step is not exact PG's own.
    assert not np.allclose(steps.mean(0), expected / (1 - 1 / 4), atol=4.5 * se.max())

"""The policy-optimisation pieces (``entropy_sim/objectives/``), each on a hand-built batch, against
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
    assert [h.name for h in spec.hparams] == ["eta", "eps", "eps_high", "frac", "w_low", "w_high",
                                              "lambda"]
    assert spec.column_names == ("entropy_batch", "batch_reward", "zero_adv_groups", "clip_frac",
                                 "clip_frac_low", "clip_frac_high", "cov_tokens")
    assert spec.sampled and [o.name for o in spec.options] == ["batch", "group", "epochs",
                                                               "mini_batches"]


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
    from entropy_sim.rules.registry import RULES

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



# ----------------------------------------------------------------------------- framework knobs

def surrogate_and_grad(surrogate, log_ratio, adv, hp):
    """The surrogate's per-token value at ``r = exp(log_ratio)``, its clip flags, and the gradient
    of the token mean of the value with respect to ``log_ratio`` (= the gradient in log pi)."""
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in hp.items()}
    log_ratio, adv = jnp.asarray(log_ratio, jnp.float64), jnp.asarray(adv, jnp.float64)
    value, clipped = surrogate(jnp.exp(log_ratio), adv, hp)
    grad = jax.grad(lambda x: jnp.mean(surrogate(jnp.exp(x), adv, hp)[0]))(log_ratio)
    return np.asarray(value), np.asarray(clipped), np.asarray(grad)


RATIOS = np.array([0.5, 0.9, 1.1, 1.25, 1.5, 0.5, 0.75, 0.9, 1.25, 4.0])
ADVS = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -2.0])


def test_asymmetric_clip_caps_the_ratio_at_one_plus_eps_high_and_splits_the_clip_fraction():
    value, clipped, grad = surrogate_and_grad(ob.ppo_clip.surrogate, np.log(RATIOS), ADVS,
                                              {"eps": 0.2, "eps_high": 0.28})
    # A > 0: min(r, 1.28) A; A < 0: max(r, 0.8) A (the clip binds on the side the step pushes).
    expected = [0.5, 0.9, 1.1, 1.25, 1.28, -0.8, -0.8, -0.9, -1.25, -8.0]
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    # Gradient d(mean value)/d log r = r A / n where the plain branch is taken, 0 where the clip acts.
    low = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0], bool)   # r < 1 - eps with A < 0
    high = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)  # r > 1 + eps_high with A > 0
    np.testing.assert_array_equal(clipped, low | high)
    np.testing.assert_allclose(grad, np.where(low | high, 0.0, RATIOS * ADVS / 10), rtol=1e-12)
    # r = 1.25 is clipped by a symmetric eps = 0.2, not by eps_high = 0.28.
    _, sym, _ = surrogate_and_grad(ob.ppo_clip.surrogate, np.log(RATIOS), ADVS, {"eps": 0.2})
    np.testing.assert_array_equal(sym, low | high | (RATIOS == 1.25) & (ADVS > 0))


def test_eps_high_minus_one_or_equal_to_eps_is_bitwise_grpo():
    base, info = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=20.0, epochs=3)
    # Both bounds act: the test sees the bounds the step uses.
    assert info["clip_frac_low"] > 0 and info["clip_frac_high"] > 0
    for eps_high in (-1.0, 0.2):
        again, other = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=20.0, epochs=3,
                            eps_high=eps_high)
        np.testing.assert_array_equal(again, base)
        assert other["clip_frac"] == info["clip_frac"]
    wider, _ = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=20.0, epochs=3, eps_high=5.0)
    assert not np.array_equal(wider, base)


def test_clip_fraction_columns_count_the_lower_and_upper_bound_cuts_over_the_epochs():
    """Two epochs at a large step: the second epoch's ratios, from the first step's logits, decide
    which tokens each bound cut; the columns average the two epochs (the first clips nothing)."""
    eta, hp = 20.0, {"eps": 0.1, "eps_high": 0.3}
    theta_1, _ = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=eta, epochs=1, **hp)
    _, info = step("grpo", (ob.group_normalised, ob.ppo_clip), eta=eta, epochs=2, **hp)
    pi_0, pi_1 = softmax(THETA), softmax(theta_1)
    states = np.repeat(np.arange(2), 4).reshape(2, 4)
    r = pi_1[states, ACTION] / pi_0[states, ACTION]
    adv = group_adv()
    low = (r < 1 - 0.1) & (adv < 0)
    high = (r > 1 + 0.3) & (adv > 0)
    assert low.any() and high.any()
    np.testing.assert_allclose(info["clip_frac_low"], low.mean() / 2, rtol=1e-6)
    np.testing.assert_allclose(info["clip_frac_high"], high.mean() / 2, rtol=1e-6)
    np.testing.assert_allclose(info["clip_frac"], info["clip_frac_low"] + info["clip_frac_high"],
                               rtol=1e-6)


def test_eps_high_between_minus_one_and_zero_is_refused_naming_the_field():
    from entropy_sim.errors import ConfigError
    ob.surrogates._check_eps_high({"eps_high": -1.0}, 3)
    ob.surrogates._check_eps_high({"eps_high": [0.0, 0.28]}, 3)
    with pytest.raises(ConfigError, match=r"algo.eps_high\[1\]"):
        ob.surrogates._check_eps_high({"eps_high": [0.28, -0.2]}, 3)


def test_dual_clip_gives_negative_advantage_tokens_past_c_the_value_c_a_and_no_gradient():
    def surrogate(ratio, adv, hp):
        value, clipped = ob.ppo_clip.surrogate(ratio, adv, hp)
        tok = ob.Tokens(value, clipped, jnp.log(ratio), ratio, adv)
        tok, aux = ob.dual_clip.select(tok, None, hp, None)
        surrogate.aux = aux
        return tok.value, tok.clipped

    value, clipped, grad = surrogate_and_grad(surrogate, np.log(RATIOS), ADVS,
                                              {"eps": 0.2, "clip_c": 3.0})
    # Only the last token (A = -2, r = 4 > c = 3) changes: max(min(r A, clip(r) A), c A) = c A.
    expected = [0.5, 0.9, 1.1, 1.2, 1.2, -0.8, -0.8, -0.9, -1.25, -6.0]
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    assert grad[-1] == 0.0 and clipped[-1]
    np.testing.assert_allclose(grad[-2], 1.25 * -1.0 / 10, rtol=1e-12)  # r = 1.25 < c: PPO's r A
    np.testing.assert_allclose(surrogate.aux["dual_clip_frac"], 0.1)
    # A > 0 is never touched, however large r.
    v, c, g = surrogate_and_grad(surrogate, np.log([5.0]), [1.0], {"eps": 0.2, "clip_c": 3.0})
    assert v[0] == 1.2 and c[0] and g[0] == 0.0


def test_dual_clip_with_one_epoch_is_bitwise_grpo():
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    dual, info = step("dual", (ob.group_normalised, ob.ppo_clip, ob.dual_clip))
    np.testing.assert_array_equal(base, dual)
    assert info["dual_clip_frac"] == 0.0


def test_gspo_clips_the_geometric_mean_ratio_of_each_response_on_all_its_tokens():
    log_r = np.array([[[0.1, -0.3], [0.2, 0.4], [-0.5, 0.1]]])  # [1, 3, 2]: 3 responses of 2 tokens
    adv = np.broadcast_to(np.array([[1.0, 1.0, -1.0]])[..., None], log_r.shape)
    hp = {"eps": 0.2, "eps_high": 0.2}
    value, clipped, grad = surrogate_and_grad(ob.gspo_clip.surrogate, log_r, adv, hp)
    s = np.exp(log_r.mean(-1))  # 0.905, 1.35, 0.819
    a = adv[..., 0]
    cut = ((s > 1.2) & (a > 0)) | ((s < 0.8) & (a < 0))
    np.testing.assert_array_equal(cut, [[False, True, False]])
    per_response = np.minimum(s * a, np.clip(s, 0.8, 1.2) * a)
    np.testing.assert_allclose(value, np.repeat(per_response[..., None], 2, -1), rtol=1e-12)
    np.testing.assert_array_equal(clipped, np.repeat(cut[..., None], 2, -1))
    # Every token of an unclipped response gets s_i A_i / N, whatever its own ratio.
    expected = np.where(cut, 0.0, s * a)[..., None] / log_r.size
    np.testing.assert_allclose(grad, np.repeat(expected, 2, -1), rtol=1e-12)
    # Equal token ratios: the sequence ratio is that ratio, and GSPO is PPO token by token.
    same = np.full((1, 3, 2), np.log(1.3))
    v_seq, c_seq, g_seq = surrogate_and_grad(ob.gspo_clip.surrogate, same, adv, hp)
    v_tok, c_tok, g_tok = surrogate_and_grad(ob.ppo_clip.surrogate, same, adv, hp)
    np.testing.assert_allclose(v_seq, v_tok, rtol=1e-12)
    np.testing.assert_array_equal(c_seq, c_tok)
    np.testing.assert_allclose(g_seq, g_tok, rtol=1e-12)


def test_gspo_on_policy_step_is_grpo_step():
    """One epoch: r = 1 exactly, so s = 1 and each token's gradient is A / N, GRPO's."""
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    gspo, info = step("gspo", (ob.group_normalised, ob.gspo_clip), eps=3e-4, eps_high=4e-4)
    np.testing.assert_allclose(gspo, base, rtol=1e-14, atol=1e-15)
    assert info["clip_frac"] == 0.0


def test_cispo_gradient_is_the_capped_weight_times_a_and_nothing_is_cut():
    value, clipped, grad = surrogate_and_grad(ob.cispo_weight.surrogate, np.log(RATIOS), ADVS,
                                              {"eps_max": 1.3})
    w = np.minimum(RATIOS, 1.3)
    np.testing.assert_allclose(grad, w * ADVS / 10, rtol=1e-12)
    np.testing.assert_allclose(value, w * ADVS * np.log(RATIOS), rtol=1e-12)
    np.testing.assert_array_equal(clipped, RATIOS > 1.3)
    # A = 0 is never flagged, so clip_frac_low + clip_frac_high = clip_frac.
    _, flags, _ = surrogate_and_grad(ob.cispo_weight.surrogate, np.log([2.0]), [0.0],
                                     {"eps_max": 1.3})
    assert not flags.any()


def test_cispo_on_policy_step_is_grpo_step():
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    cispo, _ = step("cispo", (ob.group_normalised, ob.cispo_weight))
    np.testing.assert_allclose(cispo, base, rtol=1e-14, atol=1e-15)


def test_sapo_gate_value_and_gradient_are_the_sigmoid_closed_forms():
    hp = {"tau_pos": 1.0, "tau_neg": 1.05}
    value, clipped, grad = surrogate_and_grad(ob.sapo_gate.surrogate, np.log(RATIOS), ADVS, hp)
    tau = np.where(ADVS > 0, 1.0, 1.05)
    sig = 1 / (1 + np.exp(-tau * (RATIOS - 1)))
    np.testing.assert_allclose(value, sig * 4 / tau * ADVS, rtol=1e-12)
    # d/d log r of sigma(tau (r - 1)) 4 / tau = 4 sigma (1 - sigma) r.
    np.testing.assert_allclose(grad, 4 * sig * (1 - sig) * RATIOS * ADVS / 10, rtol=1e-12)
    assert not clipped.any()
    # At r = 1 the gradient is A: the policy gradient.
    _, _, g1 = surrogate_and_grad(ob.sapo_gate.surrogate, np.zeros(2), [2.0, -3.0], hp)
    np.testing.assert_allclose(g1, [1.0, -1.5], rtol=1e-14)


def test_batch_normalised_divides_the_group_centred_reward_by_the_batch_std():
    adv = ob.batch_normalised.advantage(None, context(), {})
    centred = REWARD - REWARD.mean(-1, keepdims=True)
    expected = centred / REWARD.std(ddof=1)  # std over all 8 rewards: sqrt(2/7)
    np.testing.assert_allclose(adv[..., 0], expected, rtol=1e-12)
    assert np.all(np.asarray(adv[1]) == 0.0)
    # A batch of equal rewards: exactly zero, not NaN.
    flat = context()._replace(sample=fixed_batch()._replace(reward=jnp.ones((2, 4))))
    assert np.all(np.asarray(ob.batch_normalised.advantage(None, flat, {})) == 0.0)


def test_signed_reward_and_sign_weights_give_w_reinforce_psr_and_nsr():
    adv = ob.signed_reward.advantage(None, context(), {})
    np.testing.assert_array_equal(adv[..., 0], 2 * REWARD - 1)
    for pos, neg in ((0.1, 1.0), (1.0, 0.0), (0.0, 1.0)):  # W-REINFORCE, PSR, NSR
        shaped = ob.sign_weighted.advantage(adv, context(), {"pos_weight": pos, "neg_weight": neg})
        np.testing.assert_allclose(shaped[..., 0], np.where(REWARD > 0, pos, -neg), rtol=1e-15)
    # The W-REINFORCE step: sum over tokens of w_i grad log pi, w = 0.1 for R = 1, -1 for R = 0.
    theta_next, _ = step("w", (ob.signed_reward, ob.plain_ratio, ob.sign_weighted), eta=0.5,
                         pos_weight=0.1)
    weights = np.where(REWARD > 0, 0.1, -1.0)
    np.testing.assert_allclose(theta_next, THETA + 0.5 * score_direction(weights), rtol=1e-12)


def test_forking_tokens_keep_only_the_top_entropy_tokens_ties_included():
    # State 0 has the higher entropy; the 4 tokens of each state are tied.
    pi = softmax(THETA)
    ent = -(pi * np.log(pi)).sum(-1)
    assert ent[0] > ent[1]
    ctx = context()
    tok = tokens(ctx)
    for rho, kept_states in ((0.2, [0]), (0.5, [0]), (0.6, [0, 1]), (1.0, [0, 1]), (0.0, [0])):
        out, aux = ob.forking_tokens.select(tok, ctx, {"top_entropy_quantile": rho}, None)
        keep = np.isin(np.repeat(np.arange(2), 4).reshape(2, 4, 1), kept_states)
        np.testing.assert_array_equal(out.value, np.where(keep, tok.value, 0.0))
        assert aux["forking_frac"] == keep.mean()
    # The step, with A = 2R - 1 so that both states have advantages: the score direction with the
    # low-entropy state's tokens dropped, still divided by all 8 tokens.
    theta_next, info = step("fork", (ob.signed_reward, ob.ppo_clip, ob.forking_tokens),
                            top_entropy_quantile=0.2)
    weights = (2 * REWARD - 1) * np.array([[1.0], [0.0]])
    np.testing.assert_allclose(theta_next, THETA + 0.5 * score_direction(weights), rtol=1e-12)
    assert info["forking_frac"] == 0.5
    # rho = 1 keeps every token: bitwise GRPO.
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    every, _ = step("fork", (ob.group_normalised, ob.ppo_clip, ob.forking_tokens),
                    top_entropy_quantile=1.0)
    np.testing.assert_array_equal(every, base)


def test_quantile_threshold_is_torch_quantile_and_exact_among_ties():
    x = jnp.array([0.3, 0.1, 0.7, 0.5, 0.9])
    for q in (0.0, 0.2, 0.35, 0.8, 1.0):
        np.testing.assert_allclose(ob.quantile_threshold(x, q), np.quantile(np.asarray(x), q),
                                   rtol=1e-12)
    tied = jnp.full(7, 0.1 + 0.2)  # a value whose interpolation with itself may round away
    for q in np.linspace(0, 1, 11):
        assert ob.quantile_threshold(tied, q) == tied[0]


def test_with_defaults_changes_defaults_only_and_refuses_unknown_names():
    dapo = ob.with_defaults(ob.ppo_clip, eps_high=0.28)
    assert [(h.name, h.default) for h in dapo.hparams] == [("eps", 0.2), ("eps_high", 0.28)]
    assert dapo.surrogate is ob.ppo_clip.surrogate and dapo.name == "ppo_clip"
    with pytest.raises(ValueError, match="eps_hi"):
        ob.with_defaults(ob.ppo_clip, eps_hi=0.28)


# ----------------------------------------------------------------------------- KL to a reference

def kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)), written out."""
    log_p, log_q = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q))


def expected_over_actions(fn, theta):
    """``sum_a pi(a) fn(theta, a)`` on a one-state bandit, the action held fixed in ``fn``."""
    pi = np.asarray(jax.nn.softmax(theta))
    return sum(pi[a] * np.asarray(fn(theta, a)) for a in range(len(pi)))


@pytest.mark.parametrize("case", range(5))
def test_kl_estimators_expected_values_and_gradients_are_their_closed_forms(case):
    """Exact expectations over a one-state bandit (docs/theory.md §9.3): k1 and k3 are unbiased
    for KL(pi || ref), k2's mean is E[x^2] / 2; as a loss, k1's expected gradient is 0, k2's and
    k3+'s are grad KL(pi || ref), k3's is grad KL(ref || pi); as a reward under the score
    function, k1 gives grad KL(pi || ref)."""
    rng = np.random.default_rng(case)
    theta, ref = (jnp.asarray(0.7 * rng.normal(size=5)) for _ in range(2))
    log_ref = jax.nn.log_softmax(ref)
    assert np.max(np.asarray(log_ref - jax.nn.log_softmax(theta))) < np.log(11)  # k3 unclamped

    def value(est):
        return lambda th, a: ob.kl_estimate(jax.nn.log_softmax(th)[a], log_ref[a], est)

    def grad(est):
        return lambda th, a: jax.grad(value(est))(th, a)

    forward = float(kl(theta, ref))
    x = np.asarray(jax.nn.log_softmax(theta) - log_ref)
    pi = np.asarray(jax.nn.softmax(theta))
    np.testing.assert_allclose(expected_over_actions(value("k1"), theta), forward, rtol=1e-12)
    np.testing.assert_allclose(expected_over_actions(value("k3"), theta), forward, rtol=1e-12)
    np.testing.assert_allclose(expected_over_actions(value("k3+"), theta), forward, rtol=1e-12)
    np.testing.assert_allclose(expected_over_actions(value("k2"), theta), 0.5 * pi @ x ** 2,
                               rtol=1e-12)
    grad_forward = np.asarray(jax.grad(lambda th: kl(th, ref))(theta))
    grad_reverse = np.asarray(jax.grad(lambda th: kl(ref, th))(theta))
    assert np.abs(grad_forward - grad_reverse).max() > 1e-2  # the two directions differ here
    np.testing.assert_allclose(expected_over_actions(grad("k1"), theta), 0.0, atol=1e-14)
    np.testing.assert_allclose(expected_over_actions(grad("k2"), theta), grad_forward, atol=1e-13)
    np.testing.assert_allclose(expected_over_actions(grad("k3+"), theta), grad_forward, atol=1e-13)
    np.testing.assert_allclose(expected_over_actions(grad("k3"), theta), grad_reverse, atol=1e-13)
    score = lambda th, a: float(value("k1")(th, a)) * jax.grad(  # noqa: E731
        lambda t: jax.nn.log_softmax(t)[a])(th)
    np.testing.assert_allclose(expected_over_actions(score, theta), grad_forward, atol=1e-13)


def test_k3_is_clamped_as_verl_clamps_it():
    """verl clamps x to [-20, 20] (no overflow) and k3 to [-10, 10]: far from the reference
    (pi_ref / pi > 13.6 or pi / pi_ref > e^11, where k3 = 10) the value is 10 and the gradient 0."""
    logp, ref = jnp.asarray([0.0, -30.0, 0.0, 0.0]), jnp.asarray([-30.0, 0.0, -0.5, -5.0])
    k3 = np.asarray(ob.kl_estimate(logp, ref, "k3"))
    np.testing.assert_allclose(k3, [10.0, 10.0, np.exp(-0.5) - 1 + 0.5, np.exp(-5.0) - 1 + 5.0],
                               rtol=1e-14)
    grad = np.asarray(jax.grad(lambda lp: jnp.sum(ob.kl_estimate(lp, ref, "k3")))(logp))
    np.testing.assert_allclose(grad, [0.0, 0.0, 1 - np.exp(-0.5), 1 - np.exp(-5.0)], rtol=1e-14)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        ob.kl_estimate(logp, ref, "k4")


KL_BANDIT_R = np.zeros((2, 3))  # every reward 0: the step is the KL term's alone


def kl_steps(kl_in, estimator, group=4, draws=40_000):
    """Sampled one-epoch sgd steps (eta = 1) of a chain with the KL penalty at kl_coef 0.5, from
    THETA with the reference REF_THETA, on a contextual bandit whose rewards are all 0."""
    spec = ob.policy_rule("kl_test", "test", ob.group_centred, ob.plain_ratio, ob.reference_kl)
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in {**spec.defaults, "eta": 1.0,
                                                      "kl_coef": 0.5}.items()}
    env = contextual_bandit(KL_BANDIT_R.tolist(), [0.3, 0.7])
    theta = jnp.asarray(THETA)
    opt = optim.make_optimizer("sgd", hp)
    opt_state, carried = spec.init(theta, hp, opt)
    carried = {"reference_kl": carried["reference_kl"]._replace(logits=jnp.asarray(REF_THETA))}
    ev = env.evaluate(theta, 0.0)

    def direction(key):
        theta_next, _, _ = spec.fn(theta, (opt_state, carried), ev, env, hp, key, opt, batch=4,
                                   group=group, epochs=1, kl_in=kl_in, kl_estimator=estimator,
                                   kl_ctrl="fixed")
        return theta_next - theta

    keys = jax.random.split(jax.random.PRNGKey(11), draws)
    return np.asarray(jax.jit(jax.vmap(direction))(keys))


REF_THETA = np.array([[-0.4, 0.6, 0.2], [0.9, -0.3, 0.0]])


def occupancy_weighted_kl_grad(reverse=False):
    """grad over theta of sum_s rho(s) KL(pi_s || ref_s) (or KL(ref_s || pi_s)), rho = (0.3, 0.7)."""
    rho = jnp.asarray([0.3, 0.7])

    def total(th):
        pairs = [(jnp.asarray(REF_THETA)[s], th[s]) if reverse else (th[s], jnp.asarray(REF_THETA)[s])
                 for s in range(2)]
        return sum(rho[s] * kl(*pairs[s]) for s in range(2))

    return np.asarray(jax.grad(total)(jnp.asarray(THETA)))


@pytest.mark.parametrize("kl_in, estimator, factor, reverse", [
    ("reward", "k1", 1 - 1 / 4, False),  # the score function: unbiased, times G's (1 - 1/G)
    ("loss", "k2", 1.0, False),           # differentiated: k2's gradient is the true one
    ("loss", "k3", 1.0, True),            # ... and k3's that of the other direction
])
def test_reference_kl_expected_step_is_minus_coef_times_the_closed_form_kl_gradient(
        kl_in, estimator, factor, reverse):
    """Through the whole chain, sampled (Monte Carlo within 4.5 standard errors): the expected
    logit step of the KL term is -kl_coef x grad KL; in the reward, a group-centred advantage
    keeps (1 - 1/G) of it (as Dr. GRPO keeps of PG's)."""
    steps = kl_steps(kl_in, estimator)
    expected = -0.5 * factor * occupancy_weighted_kl_grad(reverse)
    se = steps.std(0, ddof=1) / np.sqrt(len(steps))
    assert np.abs(expected).max() > 20 * se.max()  # a resolved, non-zero step
    assert np.all(np.abs(steps.mean(0) - expected) < 4.5 * se + 1e-12), (steps.mean(0), expected, se)


def test_k1_in_the_loss_has_no_expected_step():
    steps = kl_steps("loss", "k1", draws=20_000)
    se = steps.std(0, ddof=1) / np.sqrt(len(steps))
    assert np.all(np.abs(steps.mean(0)) < 4.5 * se + 1e-12), (steps.mean(0), se)
    assert np.abs(occupancy_weighted_kl_grad()).max() > 20 * se.max()


def kl_update(ref_logits, hp_values, options, theta_next, step=0, coef=0.5):
    """One ``reference_kl.update`` on the fixed batch from ``ref_logits``."""
    spec = ob.policy_rule("kl_test", "test", ob.group_normalised, ob.ppo_clip, ob.reference_kl)
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in {**spec.defaults, "eta": 1.0,
                                                      **hp_values}.items()}
    ref = ob.Reference(jnp.asarray(ref_logits), jnp.asarray(coef), jnp.asarray(step, jnp.int32))
    ctx = context()._replace(options={"kl_estimator": "k1", "kl_ctrl": "fixed", "kl_in": "loss",
                                      **options}, carried={"reference_kl": ref})
    return ob.reference_kl.update(ref, jnp.asarray(theta_next), ctx, hp, {})


def test_adaptive_kl_coefficient_follows_verls_controller():
    """verl's AdaptiveKLController: coef x (1 + clip(kl / target - 1, -0.2, 0.2) n / horizon), n
    the responses of the step (8 here), kl the batch's mean estimate."""
    log_ref = np.log(softmax(REF_THETA))
    logp_old = np.log(softmax(THETA))[fixed_batch().state[..., 0], ACTION]
    batch_kl = np.mean(logp_old - log_ref[fixed_batch().state[..., 0], ACTION])
    for target in [0.01, batch_kl * 1.1, 10.0]:
        ref, info = kl_update(REF_THETA, {"target_kl": target, "kl_horizon": 100.0},
                              {"kl_ctrl": "adaptive"}, THETA)
        error = np.clip(batch_kl / target - 1, -0.2, 0.2)
        np.testing.assert_allclose(float(ref.coef), 0.5 * (1 + error * 8 / 100), rtol=1e-12)
        np.testing.assert_allclose(float(info["kl_batch"]), batch_kl, rtol=1e-12)
        assert float(info["kl_coef_t"]) == 0.5  # the coefficient this step used
    ref, _ = kl_update(REF_THETA, {"target_kl": 0.01}, {"kl_ctrl": "fixed"}, THETA)
    assert float(ref.coef) == 0.5


def test_reference_resets_or_mixes_in_every_ref_reset_every_steps_and_logs_the_exact_kl():
    theta_next = THETA + 1.0
    for step, reset in [(0, False), (1, False), (2, True), (5, True), (6, False)]:
        # steps taken before this update: the reset falls where (step + 1) % 3 == 0
        ref, info = kl_update(REF_THETA, {"ref_reset_every": 3, "ref_mix": 0.6}, {}, theta_next,
                              step=step)
        want = 0.6 * theta_next + 0.4 * REF_THETA if reset else REF_THETA
        np.testing.assert_allclose(np.asarray(ref.logits), want, rtol=1e-14)
        assert int(ref.step) == step + 1
    ref, _ = kl_update(REF_THETA, {"ref_reset_every": 1}, {}, theta_next)
    np.testing.assert_array_equal(np.asarray(ref.logits), theta_next)  # ref_mix 1: ProRL's reset
    ref, _ = kl_update(REF_THETA, {"ref_reset_every": 0}, {}, theta_next, step=11)
    np.testing.assert_array_equal(np.asarray(ref.logits), REF_THETA)  # 0: never
    # kl_ref: the exact occupancy-weighted KL(pi_old || ref), rho = (0.5, 0.5) in this env
    pi, log_ref = softmax(THETA), np.log(softmax(REF_THETA))
    per_state = (pi * (np.log(pi) - log_ref)).sum(-1)
    np.testing.assert_allclose(float(info["kl_ref"]), 0.5 * per_state.sum(), rtol=1e-12)


@pytest.mark.parametrize("options", [{"kl_in": "loss", "kl_estimator": "k3"},
                                     {"kl_in": "reward", "kl_estimator": "k1"},
                                     {"kl_in": "loss", "kl_estimator": "k3+"}])
def test_kl_coef_zero_is_bitwise_grpo(options):
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip), epochs=2)
    spec = ob.policy_rule("kl_zero", "test", ob.group_normalised, ob.ppo_clip, ob.reference_kl)
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in {**spec.defaults, "eta": 0.5,
                                                      "kl_coef": 0.0}.items()}
    theta = jnp.asarray(THETA)
    opt = optim.make_optimizer("sgd", hp)
    state = spec.init(theta, hp, opt)
    state = (state[0], {"reference_kl": state[1]["reference_kl"]._replace(logits=jnp.asarray(REF_THETA))})
    theta_next, _, info = spec.fn(theta, state, ENV.evaluate(theta, 0.0), ENV, hp,
                                  jax.random.PRNGKey(0), opt, batch=2, group=4, epochs=2,
                                  kl_ctrl="fixed", **options)
    np.testing.assert_array_equal(np.asarray(theta_next), base)
    assert float(info["kl_ref"]) > 0


# ----------------------------------------------------------------------------- entropy control

def adaptive_update(coef, target, **hp_values):
    spec = ob.policy_rule("ent_test", "test", ob.group_normalised, ob.ppo_clip, ob.adaptive_entropy)
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in {**spec.defaults, "eta": 1.0,
                                                      "entropy_target": target,
                                                      **hp_values}.items()}
    control = ob.EntropyControl(jnp.asarray(coef))
    ctx = context()._replace(carried={"adaptive_entropy": control})
    _, info = ob.adaptive_entropy.prepare(ctx, hp, jax.random.PRNGKey(0))
    new, _ = ob.adaptive_entropy.update(control, jnp.asarray(THETA), ctx, hp, {})
    return float(new.coef), float(info["entropy_coef_t"])


def test_adaptive_entropy_coefficient_steps_toward_the_target_within_its_bounds():
    """Skywork-OR1 / TRL: the bonus applies c while the batch's entropy is at most the target;
    then c moves by delta (up below the target, down above), clipped to [min, max]."""
    batch_entropy = np.mean((-softmax(THETA) * np.log(softmax(THETA))).sum(-1))  # 4 tokens each
    below, above = batch_entropy + 0.01, batch_entropy - 0.01
    assert adaptive_update(0.1, below) == (0.1 + 0.005, 0.1)
    assert adaptive_update(0.1, above) == (0.1 - 0.005, 0.0)
    assert adaptive_update(0.998, below)[0] == 1.0           # entropy_coef_max
    assert adaptive_update(0.002, above)[0] == 0.0           # entropy_coef_min
    assert adaptive_update(0.2, below, entropy_coef_delta=0.05, entropy_coef_max=0.22)[0] == 0.22


def test_adaptive_entropy_bonus_is_the_applied_coefficient_times_the_entropy_gradient():
    """Below the target the step is GRPO's plus c x grad of the token-mean entropy; above it,
    bitwise GRPO's."""
    base, _ = step("grpo", (ob.group_normalised, ob.ppo_clip))
    spec = ob.policy_rule("ent_test", "test", ob.group_normalised, ob.ppo_clip, ob.adaptive_entropy)
    theta = jnp.asarray(THETA)
    def token_mean_entropy(th):
        ent = -jnp.sum(jax.nn.softmax(th) * jax.nn.log_softmax(th), axis=-1)
        return jnp.mean(ent[fixed_batch().state])

    ent_grad = np.asarray(jax.grad(token_mean_entropy)(theta))
    for target, applied in [(5.0, 0.3), (0.0, 0.0)]:
        hp = {k: jnp.asarray(v, jnp.float64) for k, v in {**spec.defaults, "eta": 0.5,
                                                          "entropy_coef": 0.3,
                                                          "entropy_target": target}.items()}
        opt = optim.make_optimizer("sgd", hp)
        theta_next, _, info = spec.fn(theta, spec.init(theta, hp, opt), ENV.evaluate(theta, 0.0),
                                      ENV, hp, jax.random.PRNGKey(0), opt, batch=2, group=4,
                                      epochs=1)
        assert float(info["entropy_coef_t"]) == applied
        if applied:
            np.testing.assert_allclose(np.asarray(theta_next), base + 0.5 * applied * ent_grad,
                                       rtol=1e-12, atol=1e-14)
        else:
            np.testing.assert_array_equal(np.asarray(theta_next), base)


# ----------------------------------------------------------------------------- mini-batches

def test_mini_batches_step_in_order_each_on_its_prompts_off_policy_after_the_first():
    """Two mini-batches, one epoch, the r A surrogate, sgd: the first step is the token-mean score
    of prompt 0's responses at pi_old; the second, of prompt 1's at the policy after the first,
    each token weighted by its ratio r = pi / pi_old (both prompts share state 0 here, so the
    second step sees the first). Written out in NumPy."""
    reward = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    state = np.zeros((2, 4, 1), int)
    batch = Batch(prompt=jnp.arange(2), state=jnp.asarray(state), action=jnp.asarray(ACTION[..., None]),
                  reward=jnp.asarray(reward), togo=jnp.asarray(reward[..., None]), discount=jnp.ones(1))

    @dataclasses.dataclass(frozen=True)
    class OneStateEnv(FixedBatchEnv):
        def sample(self, key, logits, prompts, group):
            return batch

    env = OneStateEnv(contextual_bandit(R.tolist(), [0.5, 0.5]))
    spec = ob.policy_rule("mb", "test", ob.group_centred, ob.plain_ratio)
    eta = 0.7
    hp = {"eta": jnp.asarray(eta, jnp.float64)}
    theta = jnp.asarray(THETA)
    opt = optim.make_optimizer("sgd", hp)
    got, _, _ = spec.fn(theta, opt.init(theta), env.evaluate(theta, 0.0), env, hp,
                        jax.random.PRNGKey(0), opt, batch=2, group=4, epochs=1, mini_batches=2)
    adv = reward - reward.mean(axis=1, keepdims=True)
    pi_old = softmax(THETA)[0]
    want = THETA.copy()
    for j in range(2):  # prompt j: 4 tokens of state 0
        pi = softmax(want)[0]
        direction = np.zeros(3)
        for i in range(4):
            a = ACTION[j, i]
            direction += adv[j, i] * pi[a] / pi_old[a] * (np.eye(3)[a] - pi) / 4
        want[0] += eta * direction
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-15)
    one, _, _ = spec.fn(theta, opt.init(theta), env.evaluate(theta, 0.0), env, hp,
                        jax.random.PRNGKey(0), opt, batch=2, group=4, epochs=1)
    assert not np.allclose(np.asarray(one), want)  # one step on both prompts differs


def test_mini_batches_that_do_not_divide_the_batch_or_split_aepo_are_refused():
    import entropy_sim as es
    from entropy_sim.errors import ConfigError

    base = {"seeds": 2, "steps": 2, "env": {"kind": "bandit", "means": [1.0, 0.0]},
            "algo": {"name": "grpo", "eta": 1.0, "batch": 6, "mini_batches": 4}}
    with pytest.raises(ConfigError, match=r"algo.mini_batches: must divide batch = 6"):
        es.Config(base)
    with pytest.raises(ConfigError, match=r"algo.mini_batches: AEPO's regulariser"):
        es.Config({**base, "algo": {"name": "aepo", "eta": 1.0, "entropy_target": 0.5,
                                    "mini_batches": 2}})
    es.Config({**base, "algo": {**base["algo"], "mini_batches": 3}})  # 3 divides 6


# ----------------------------------------------------------------------------- dynamic sampling

def verl_dynamic_sampling(reward: np.ndarray, batch: int):
    """verl's DAPO loop written out: generation batch k (groups k M .. (k + 1) M - 1), keep the
    groups whose rewards have np.std > 0, append; stop once M are kept and truncate to the first M;
    after the last batch, short of M, fill with the first all-equal groups (where verl raises).
    Returns (kept indices, batches drawn, all-equal groups dropped in them)."""
    kept, dropped = [], 0
    rounds = reward.shape[0] // batch
    for k in range(rounds):
        for i in range(k * batch, (k + 1) * batch):
            if np.std(reward[i]) > 0:
                kept.append(i)
            else:
                dropped += 1
        if len(kept) >= batch:
            return kept[:batch], k + 1, dropped
    fill = [i for i in range(reward.shape[0]) if np.std(reward[i]) == 0]
    return kept + fill[:batch - len(kept)], rounds, dropped


def test_informative_first_is_verls_generate_filter_truncate_loop():
    """300 random reward tables (seed 17): 6 shapes x 50 success rates from 0 to 1."""
    rng = np.random.default_rng(17)
    for batch, rounds, group in [(1, 1, 2), (1, 4, 3), (3, 1, 4), (3, 3, 2), (5, 2, 1), (4, 4, 4)]:
        p = rng.uniform(0.0, 1.0, size=(50, 1, 1))
        reward = (rng.uniform(size=(50, batch * rounds, group)) < p).astype(float)
        index, used, dropped = jax.jit(jax.vmap(lambda r: ob.informative_first(r, batch)))(reward)
        for case in range(50):
            want = verl_dynamic_sampling(reward[case], batch)
            got = (list(np.asarray(index[case])), int(used[case]), int(dropped[case]))
            assert got == want, (batch, rounds, group, reward[case])


def test_dynamic_sampling_expected_step_is_the_informative_share_over_p_times_dr_grpos():
    """Dr. GRPO's advantage is exactly 0 on a group of equal rewards, so E[g] = p E[g | informative]
    (p = P(a group is informative) = sum_s rho(s) (1 - q_s^G - (1 - q_s)^G), Bernoulli rewards of
    mean q_s = sum_a pi(a|s) r(s, a)), and a slot of the batch holds an informative group with
    probability E[min(M, Binomial(K M, p))] / M. With E[g] = (1 - 1/G) x exact PG's step, the
    expected step of dynamic sampling on K generation batches is
    E[min(M, Bin(K M, p))] / (M p) x (1 - 1/G) x exact PG's, checked by Monte Carlo within 4.5
    standard errors."""
    from math import comb

    env = contextual_bandit(R.tolist(), [0.3, 0.7], noise="bernoulli")
    spec = ob.policy_rule("dr_dynamic", "test", ob.group_centred, ob.dynamic_sampling, ob.ppo_clip)
    theta = jnp.asarray(THETA)
    hp = {"eta": jnp.asarray(1.0, jnp.float64), "eps": jnp.asarray(0.2, jnp.float64)}
    opt = optim.make_optimizer("sgd", hp)
    ev = env.evaluate(theta, 0.0)
    m, g, k = 2, 4, 2

    def direction(key):
        theta_next, _, info = spec.fn(theta, opt.init(theta), ev, env, hp, key, opt, batch=m,
                                      group=g, epochs=1, gen_batches=k)
        return theta_next - theta, info

    steps, info = jax.jit(jax.vmap(direction))(jax.random.split(jax.random.PRNGKey(5), 40_000))
    steps = np.asarray(steps)
    pi = softmax(THETA)
    q = (pi * R).sum(-1)
    p = float(np.sum(np.array([0.3, 0.7]) * (1 - q ** g - (1 - q) ** g)))
    n = k * m
    pmf = [comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(n + 1)]
    filled = sum(min(m, j) * w for j, w in enumerate(pmf)) / m  # E[min(M, Bin(K M, p))] / M
    pg = np.array([0.3, 0.7])[:, None] * pi * (R - q[:, None])
    expected = filled / p * (1 - 1 / g) * pg
    se = steps.std(0, ddof=1) / np.sqrt(len(steps))
    assert np.all(np.abs(steps.mean(0) - expected) < 4.5 * se + 1e-12), (steps.mean(0), expected, se)
    assert not np.allclose(steps.mean(0), (1 - 1 / g) * pg, atol=4.5 * se.max())  # Dr. GRPO's own
    # The training batch is short of informative groups exactly as often as the binomial says.
    var = sum(w * (1 - min(m, j) / m) ** 2 for j, w in enumerate(pmf)) - (1 - filled) ** 2
    short = np.mean(np.asarray(info["zero_adv_groups"]))
    assert abs(short - (1 - filled)) < 4.5 * np.sqrt(var / len(steps)), (short, 1 - filled)
    used = np.asarray(info["gen_batches_used"])
    assert set(np.unique(used)) <= {1.0, 2.0}

"""Cost of a sampled step against an exact one, and of inverse-CDF sampling against Gumbel-max.

    python benchmarks/sampling.py [--seeds 10000] [--steps 200] [--rounds 5] [--json out.json]
                                  [--workload PREFIX ...]

Workloads (10-armed Bernoulli bandits, every per-step diagnostic logged), compiled first, then
timed round-robin (``--rounds`` rounds, best per workload) in this process, so a slow spell of a
noisy machine falls on every workload alike and the ratios hold:

- exact PG (the expected-gradient step);
- sampled REINFORCE, batch 64, batch-mean baseline, as the engine runs it: one uniform per
  response places it in the cumulative distribution, and the batch enters only through counts
  and reward sums per arm, found by counting uniforms above thresholds (``ContextualBandit.tally``);
- the same draws one by one: an action and a reward per response (inverse CDF), then a scatter
  into the per-arm table (``ContextualBandit.sample``, the path of contextual bandits);
- the same with the uniforms of ``jax.random.uniform`` instead of ``entropy_sim.prng.uniform``
  (the same Threefry generator; JAX hashes one block per number and runs it as a rolled loop);
- the same with Gumbel-max sampling (``jax.random.categorical``: one uniform and two logs per arm,
  plus a uniform for the reward), drawn one by one;
- the same from sufficient statistics drawn directly instead of one draw per response: counts per arm
  (conditional binomials) and successes per arm (binomials), each binomial by inverting its CDF;
- the random bits alone: the 64 uniforms of every seed-step and nothing else, from either source;
- the policy-optimisation family on the same 64 responses (8 prompts x groups of 8): GRPO, DAPO
  (dynamic sampling from 3 generation batches, clip-higher) and GSPO (sequence-level ratio), one
  epoch each, as the engine runs them.

Each variant is registered as a rule of its own (``RULES``), so every compiled program stays
cached while the rounds alternate between them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

import entropy_sim as es
from entropy_sim import prng
from entropy_sim.engine import runner
from entropy_sim.envs import ContextualBandit
from entropy_sim.rules.exact import finish, pg_closed
from entropy_sim.rules.registry import RULES
from entropy_sim.sampling import Batch, draw_prompts

BATCH = 64
POLICY_ROWS = {"GRPO": "grpo", "DAPO": "dapo", "GSPO": "gspo"}  # 8 prompts x 8 responses


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine_run(config):
    """A zero-argument function running ``config`` through the engine (compiled on first call)."""
    exp = es.build(es.Config(config))
    return lambda: runner.run_arrays(exp, progress=False)


@contextlib.contextmanager
def patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def variant(name, fn, *patches):
    """Register ``RULES[name]``: ``reinforce``'s spec with rule ``fn``, traced with ``patches``
    (``(owner, attribute, value)``) in place."""
    def rule(*args, **options):
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patched(*patch))
            return fn(*args, **options)
    RULES[name] = dataclasses.replace(RULES["reinforce"], name=name, fn=rule)


def gumbel_sample(self, key, logits, prompts, group):
    """``ContextualBandit.sample`` with Gumbel-max draws, for comparison."""
    k_prompt, k_action, k_reward = jax.random.split(key, 3)
    prompt = draw_prompts(k_prompt, self.rho, prompts)
    log_pi = jax.nn.log_softmax(logits, axis=-1)[prompt]
    action = jax.random.categorical(k_action, log_pi[:, None, :], shape=(prompts, group))
    mean = self.r[prompt[:, None], action]
    reward = (jax.random.uniform(k_reward, mean.shape, mean.dtype) < mean).astype(mean.dtype)
    state = jnp.broadcast_to(prompt[:, None, None], (prompts, group, 1))
    return Batch(prompt, state, action[..., None].astype(jnp.int32), reward, reward[..., None],
                 jnp.ones((1,), reward.dtype))


def binomial(u, n, p, n_max):
    """Binomial(n, p) by inversion of its CDF with uniform ``u`` (elementwise; ``n <= n_max``,
    float counts). Sums terms of the smaller tail probability, so ``P(0) >= 2^-n_max``."""
    flip = p > 0.5
    q = jnp.where(flip, 1.0 - p, p)
    ratio = q / (1.0 - q)
    pmf = jnp.exp(n * jnp.log1p(-q))  # P(X = 0)
    cdf, count = pmf, jnp.zeros_like(n)
    for j in range(n_max):  # X > j iff u >= F(j)
        count = count + (u >= cdf)
        pmf = pmf * jnp.maximum(n - j, 0.0) * (ratio / (j + 1))
        cdf = cdf + pmf
    count = jnp.minimum(count, n)
    return jnp.where(flip, n - count, count)


def counts_and_successes(key, pi, mean, batch):
    """Sufficient statistics of ``batch`` draws on a Bernoulli bandit, drawn directly: the counts
    per arm (Multinomial(batch, pi) as conditional binomials) and the successes per arm
    (Binomial(count, mean)). ``pi, mean: [K] -> ([K], [K])``; 2K uniforms."""
    arms = pi.shape[0]
    u = prng.uniform(key, (2 * arms,), pi.dtype)
    tail = jnp.cumsum(pi[::-1])[::-1]  # P(arm >= a)
    left, counts = jnp.asarray(float(batch), pi.dtype), []
    for a in range(arms - 1):
        n_a = binomial(u[a], left, jnp.clip(pi[a] / jnp.maximum(tail[a], 1e-30), 0.0, 1.0), batch)
        counts.append(n_a)
        left = left - n_a
    counts = jnp.stack(counts + [left])
    return counts, binomial(u[arms:], counts, mean, batch)


def counts_reinforce(theta, opt_state, ev, env, hp, key, opt, *, batch, baseline):
    """``sampled.reinforce`` with the batch-mean baseline on a bandit, from the sufficient
    statistics: the token weights sum to ``S_a - N_a mean(R)`` per arm."""
    counts, wins = counts_and_successes(jax.random.fold_in(key, 1), ev.pi[0], env.r[0], batch)
    table = (wins - counts * jnp.sum(wins) / batch)[None]
    direction = (table - jnp.sum(table, axis=-1, keepdims=True) * ev.pi) / batch
    closed = (1.0 - 1.0 / batch) * pg_closed(ev, env, hp["eta"])
    return finish(opt, theta, opt_state, direction, closed, ev, {"batch_reward": jnp.sum(wins) / batch})


def jax_uniform(key, shape=(), dtype=jnp.float32):
    """``prng.uniform``'s signature, ``jax.random.uniform``'s numbers."""
    return jax.random.uniform(key, shape, dtype)


def uniforms_run(seeds, steps, uniform):
    """A zero-argument function drawing the 64 uniforms of every seed-step, and nothing else."""
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    @jax.jit
    def draw(keys):
        def body(total, t):
            u = jax.vmap(lambda k: uniform(jax.random.fold_in(k, t), (BATCH,)))(keys)
            return total + jnp.sum(u), None
        return jax.lax.scan(body, 0.0, jnp.arange(steps))[0]

    return lambda: draw(keys).block_until_ready()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--workload", action="append", default=[], metavar="PREFIX",
                        help="run only the workloads whose name starts with PREFIX (repeat for "
                             "more; default: all); 'exact PG' is always needed")
    args = parser.parse_args(argv)
    base = {"seeds": args.seeds, "steps": args.steps,
            "env": {"kind": "bandit", "arms": 10, "generator": "uniform", "noise": "bernoulli"}}

    def reinforce(name):
        return {**base, "algo": {"name": name, "eta": 0.1, "batch": BATCH, "baseline": "mean"}}

    def policy(name):
        return {**base, "algo": {"name": name, "eta": 0.1, "batch": 8, "group": 8}}

    spec = RULES["reinforce"]
    one_by_one = (ContextualBandit, "tallies", False)
    variant("reinforce_per_draw", spec.fn, one_by_one)
    variant("reinforce_jax_uniform", spec.fn, (prng, "uniform", jax_uniform))
    variant("reinforce_gumbel", spec.fn, one_by_one, (ContextualBandit, "sample", gumbel_sample))
    variant("reinforce_counts", counts_reinforce)
    workloads = {
        "exact PG": engine_run({**base, "algo": {"name": "pg", "eta": 0.1}}),
        "REINFORCE B=64, engine (tallied inverse CDF)": engine_run(reinforce("reinforce")),
        "REINFORCE B=64, per-draw inverse CDF": engine_run(reinforce("reinforce_per_draw")),
        "REINFORCE B=64, jax.random.uniform": engine_run(reinforce("reinforce_jax_uniform")),
        "REINFORCE B=64, Gumbel-max": engine_run(reinforce("reinforce_gumbel")),
        "REINFORCE B=64, counts drawn directly": engine_run(reinforce("reinforce_counts")),
        "64 uniforms per seed-step only": uniforms_run(args.seeds, args.steps, prng.uniform),
        "64 uniforms, jax.random.uniform": uniforms_run(args.seeds, args.steps, jax_uniform),
        **{f"{label} 8 x 8": engine_run(policy(name)) for label, name in POLICY_ROWS.items()},
    }
    if args.workload:
        workloads = {k: v for k, v in workloads.items() if k.startswith(tuple(args.workload))}
        if "exact PG" not in workloads:
            parser.error("--workload: the ratios are to the exact step; include 'exact PG'")
    for fn in workloads.values():
        fn()  # compile
    times = {name: float("inf") for name in workloads}
    for _ in range(args.rounds):
        for name, fn in workloads.items():
            times[name] = min(times[name], seconds(fn))
    seed_steps = args.seeds * args.steps
    exact = times["exact PG"]
    rows = [{"workload": k, "seconds": round(v, 3), "seed_steps_per_s": round(seed_steps / v),
             "ratio_to_exact": round(v / exact, 2)} for k, v in times.items()]
    width = max(len(r["workload"]) for r in rows)
    print(f"{'workload':{width}s}  seconds  seed-steps/s  x exact step")
    for r in rows:
        print(f"{r['workload']:{width}s}  {r['seconds']:7.3f}  {r['seed_steps_per_s']:12,d}"
              f"  {r['ratio_to_exact']:12.2f}")
    record = {"seeds": args.seeds, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    engine = times.get("REINFORCE B=64, engine (tallied inverse CDF)")
    over = {"gumbel": ("Gumbel-max", "REINFORCE B=64, Gumbel-max"),
            "counts": ("counts drawn directly", "REINFORCE B=64, counts drawn directly"),
            "per_draw": ("per-draw", "REINFORCE B=64, per-draw inverse CDF"),
            "jax_uniform": ("jax.random.uniform", "REINFORCE B=64, jax.random.uniform")}
    ratios = {key: times[row] / engine for key, (_, row) in over.items()
              if engine is not None and row in times}
    if ratios:
        print("over the engine's sampled step: " + ", ".join(
            f"{over[key][0]} {ratio:.2f}x" for key, ratio in ratios.items())
            + f"   ({args.seeds} seeds x {args.steps} steps, best of {args.rounds} rounds)")
    record.update({f"{key}_over_engine": round(ratio, 2) for key, ratio in ratios.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()

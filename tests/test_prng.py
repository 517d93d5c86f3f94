"""entropy_sim.prng: JAX's Threefry-2x32 generator computed cheaply (bitwise the same bits and keys)."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.extend.random import threefry_2x32  # noqa: E402

from entropy_sim import prng  # noqa: E402

KEYS = {"raw": jax.random.PRNGKey(2024), "typed": jax.random.key(7)}


def raw(key):
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("count", [1, 2, 7, 64, 1001])
def test_bits_are_both_words_of_jax_threefry_blocks(kind, count):
    key = KEYS[kind]
    blocks = -(-count // 2)
    expected = threefry_2x32(raw(key), jax.lax.iota(jnp.uint32, 2 * blocks))[:count]
    np.testing.assert_array_equal(prng.bits(key, count), expected)
    np.testing.assert_array_equal(jax.jit(prng.bits, static_argnums=1)(key, count), expected)


@pytest.mark.parametrize("kind", KEYS)
def test_fold_in_gives_jax_keys(kind):
    key = KEYS[kind]
    for data in (0, 1, 17, 2**31 - 1, 2**32 - 1):
        np.testing.assert_array_equal(prng.fold_in(key, data), raw(jax.random.fold_in(key, data)))
    traced = jax.jit(prng.fold_in)(key, jnp.int32(12345))
    np.testing.assert_array_equal(traced, raw(jax.random.fold_in(key, 12345)))
    # Under vmap over keys, as the runner calls it.
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: prng.fold_in(k, 9))(keys),
                                  jax.vmap(lambda k: jax.random.fold_in(k, 9))(keys))


def test_uniforms_are_the_mantissa_bits_of_the_words():
    key = KEYS["raw"]
    words = np.asarray(prng.bits(key, 2000))
    u32 = np.asarray(prng.uniform(key, (1000, 2), jnp.float32))
    assert u32.dtype == np.float32 and u32.shape == (1000, 2)
    np.testing.assert_array_equal(u32.ravel(), (words >> 9) * 2.0 ** -23)  # 23 random bits
    u64 = np.asarray(prng.uniform(key, (1000,), jnp.float64))
    assert u64.dtype == np.float64
    high, low = words[:1000].astype(np.uint64), words[1000:].astype(np.uint64)
    np.testing.assert_array_equal(u64, ((high << np.uint64(32) | low) >> np.uint64(12)) * 2.0 ** -52)
    with pytest.raises(TypeError, match="float16"):
        prng.uniform(key, (3,), jnp.float16)


def test_uniforms_and_the_two_words_of_a_block_are_independent_and_uniform():
    """Chi-square on a 16 x 16 grid of the pairs (u_i, u_{i + n/2}), which share a Threefry block:
    255 degrees of freedom, mean 255, sd 22.6; the bound 255 + 6 sd fails a correct generator with
    probability below 1e-6. A pairing mistake (the same word twice) gives a chi-square of ~65,000."""
    n = 2 ** 21
    u = np.asarray(prng.uniform(jax.random.PRNGKey(5), (n,), jnp.float32))
    assert 0.0 <= u.min() and u.max() < 1.0
    first, second = u[: n // 2], u[n // 2:]

    def chi2(x, y):
        counts = np.histogram2d(x, y, bins=16, range=[[0, 1], [0, 1]])[0]
        expected = x.size / 256
        return ((counts - expected) ** 2 / expected).sum()

    bound = 255 + 6 * np.sqrt(2 * 255)
    assert chi2(first, second) < bound
    assert chi2(first, first) > bound  # the test can fail

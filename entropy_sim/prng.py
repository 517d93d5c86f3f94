"""Random numbers for sampled updates: JAX's Threefry-2x32 generator, computed more cheaply.

Random bits weigh heavily in a sampled step on a CPU, and ``jax.random`` computes them slowly
there:

- JAX lowers the Threefry block function on CPU as a rolled loop that XLA cannot fuse with the
  code using its bits; ``block`` writes out the same 20 rounds.
- ``jax.random.uniform`` (with JAX's default ``jax_threefry_partitionable``) hashes one block per
  32-bit number and XORs the block's two output words; ``uniform`` below takes a number from each
  of the two words, as the generator's authors intend (Salmon et al. 2011).

The generator is unchanged: ``block`` is bitwise equal to ``jax.extend.random.threefry_2x32``
and ``fold_in`` returns ``jax.random.fold_in``'s keys (tested); only the numbers ``uniform`` makes
from a key differ from ``jax.random.uniform``'s. ``fold_in`` makes the key of every step (in the
runner) and a bandit's action key; other keys come from ``jax.random``, because written out where a
key feeds many computations (GRPO's, say) the hash is copied into each of them and compiles take
twice as long or more. ``benchmarks/sampling.py`` measures what this module saves.

Keys are raw ``uint32[2]`` arrays (``jax.random.PRNGKey``) or typed keys (``jax.random.key``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _words(key: Array) -> tuple[Array, Array]:
    """The two uint32 words of a raw or typed key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key[..., 0], key[..., 1]


def _rotl(x: Array, r: int) -> Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def block(key: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block function with 20 rounds, JAX's: counters ``(x0, x1)`` (uint32, one
    shape) to two words of random bits of that shape. ``key: [2]``."""
    k = (*_words(key),)
    ks = (k[0], k[1], k[0] ^ k[1] ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotl(x1, r)
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def fold_in(key: Array, data) -> Array:
    """``jax.random.fold_in(key, data)`` for ``0 <= data < 2^32`` (the key of block ``(0, data)``),
    as one fused computation instead of JAX's rolled loop. Raw ``uint32[2]`` key."""
    y0, y1 = block(key, jnp.zeros((), jnp.uint32), jax.lax.convert_element_type(data, jnp.uint32))
    return jnp.stack([y0, y1])


def bits(key: Array, count: int) -> Array:
    """``count`` random uint32 words from ``ceil(count / 2)`` blocks, both words of each:
    ``jax.extend.random.threefry_2x32(key, iota(2 ceil(count / 2)))[:count]``.

    The key passes an optimisation barrier: XLA would otherwise fuse the key's own derivation
    (a step's ``fold_in`` chain) into this kernel and hash it again for every word."""
    half = -(-count // 2)
    counter = jax.lax.iota(jnp.uint32, half)
    y0, y1 = block(jax.lax.optimization_barrier(key), counter, counter + np.uint32(half))
    return jnp.concatenate([y0, y1])[:count]


def uniform(key: Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
    """Uniforms on ``[0, 1)`` with the mantissa's bits random, as ``jax.random.uniform``: 23 for
    float32 (one word each), 52 for float64 (two words each)."""
    dtype = jnp.dtype(dtype)
    count = math.prod(shape)
    if dtype.itemsize == 8:
        words = bits(key, 2 * count)
        high = words[:count].astype(jnp.uint64) << np.uint64(32)
        mantissa, one = (high | words[count:]) >> np.uint64(12), np.uint64(0x3FF0000000000000)
    elif dtype == jnp.float32:
        mantissa, one = bits(key, count) >> np.uint32(9), np.uint32(0x3F800000)
    else:
        raise TypeError(f"uniform supports float32 and float64, got {dtype}")
    floats = jax.lax.bitcast_convert_type(mantissa | one, dtype) - 1.0  # [1, 2) - 1
    return floats.reshape(shape)

"""XLA:CPU settings that must be in place before JAX starts its CPU backend.

jaxlib 0.10 hands reductions to its experimental YNN library fusions by default. For this
package's workloads (many reductions over a short action axis, batched over thousands of seeds)
they are an order of magnitude slower than XLA's own fused loops: an exact NPG step on 10-armed
bandits takes 22 s per 10^7 seed-steps with them and 1.7 s without (benchmarks/README.md). We
switch them off unless the user set the flag, and only for jaxlib versions that know the flag
(an unknown flag in XLA_FLAGS aborts the process). It has no effect if the backend already started.

JAX lowers its threefry hash on CPU (only there) as a rolled loop of 5 trips, to save compile
time. Inside this package's nested loops (steps x seed blocks) that loop is not fused into its
neighbours, and drawing the uniforms of a sampled step took about a fifth of the step
(benchmarks/sampling.py). We register JAX's own unrolled lowering, the one every other platform
uses, for CPU too: the random bits are identical, only the compiled loop changes.
"""

import os

_FLAG = "xla_cpu_experimental_ynn_fusion_type"


def configure() -> None:
    try:
        from importlib.metadata import version
        jaxlib_version = version("jaxlib")
    except Exception:  # pragma: no cover - jaxlib always present in an installed package
        return
    if not jaxlib_version.startswith("0.10."):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{_FLAG}=".strip()
    _unrolled_threefry_on_cpu()


def _unrolled_threefry_on_cpu() -> None:
    """Lower ``threefry2x32`` on CPU as on GPU and TPU (JAX internals: skipped if they moved)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry
        mlir.register_lowering(threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule,
                               platform="cpu")
    except (ImportError, AttributeError):  # pragma: no cover - another JAX version
        pass

"""XLA:CPU settings that must be in place before JAX starts its CPU backend.

jaxlib 0.10 hands reductions to its experimental YNN library fusions by default. For this
package's workloads (many reductions over a short action axis, batched over thousands of seeds)
they are an order of magnitude slower than XLA's own fused loops: an exact NPG step on 10-armed
bandits takes 22 s per 10^7 seed-steps with them and 1.7 s without (on this project's 2-core test machine). We
switch them off unless the user set the flag, and only for jaxlib versions that know the flag
(an unknown flag in XLA_FLAGS aborts the process). It has no effect if the backend already started.
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

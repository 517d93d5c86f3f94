"""Every notebook in notebooks/ runs end to end at quick size, and is stored without outputs.

No Jupyter needed: the test reads the .ipynb JSON and executes the code cells in order in one
namespace, as a kernel would (IPython magics such as ``%matplotlib inline`` are skipped). The
notebooks leave their key numbers in that namespace; ``CHECKS`` bounds them, so a notebook whose
analysis breaks (or an engine change that breaks what it shows) fails here.
"""

import json

import matplotlib
import pytest

from conftest import ROOT, texts_that_collide

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# name -> {variable left by the notebook: (low, high)}, checked after a quick run.
CHECKS = {
    "covariance_law": {
        "corr": (0.99, 1.0),         # T3 at eta <= 0.4 (0.9975 at quick size); a wrong sign or
                                     # a missing factor in dH_pred_cov or dH_realized breaks it
                                     # (T3: docs/theory.md §3)
        "slope": (1.8, 2.2),         # error ~ eta^2 (2.008); an error of first order gives 1
        "corr_within": (0.98, 1.0),  # T3 predicts the within-state part on the chain (0.994)
        "shift_share": (0.1, 0.6),   # the shift is a sizeable first-order term there (0.29);
                                     # a wrong occupancy (e.g. d_k for d_k+1) makes it 0
        "closed_gap": (0.0, 1e-6),   # T4 = dH_pred_cov for exact PG (2e-8, float32 rounding);
                                     # a missing d(s) or 1/(1 - gamma) is off by 1e-2
        "closed_z": (-4.0, 4.0),     # REINFORCE: E[dH_pred_cov] = closed form (0.6 standard
                                     # errors); a biased sampler or baseline shifts it
        "overshoot": (0.02, 1.0),    # eta = 6.4: the prediction falls below -H on 17% of steps
        "rel_small": (0.0, 0.03),    # median relative error of the steps with the smallest
                                     # std_pi(dz) (0.004; 0.012 at full size) ...
        "rel_large": (0.3, 10.0),    # ... and of the largest (1.08; 0.96 at full size)
    },
    "aepo": {
        "grpo_final_entropy": (0.0, 0.5),  # GRPO collapses from 1.73 (0.21 at quick size)
        "aepo_miss": (0.0, 0.15),          # AEPO ends near targets 0.5 and 1 (largest miss 0.04);
                                           # with its temperatures swapped it would collapse
        "thm43_violations": (0, 0),        # Theorem 4.3 (docs/theory.md §4.2) on every row
        "fd_corr": (0.99, 1.0),            # dH_dT against a central difference in T (0.9997)
        "hot_minus_cold": (0.5, 2.1),      # T = 1.2 ends far above T = 0.8 (1.34; log 8 = 2.08)
        # The hard problem: Entropy-Reg (lambda = 0.1) and AEPO (both targets) end above GRPO in
        # pass@8, paired by seed (same start): the smallest gain (0.026) ...
        "pass8_gain_min": (0.01, 0.1),
        "pass8_gain_z_min": (3.0, float("inf")),  # ... in standard errors (5.5; 11 at full size)
        # Unpaired, the means lie beyond each other's error bars: gap / (sem + sem of GRPO) is
        # 1.6 at least (3.6 at full size; with 32 seeds it was 0.4)
        "pass8_separation": (1.0, float("inf")),
    },
}


def code_cells(path) -> list[str]:
    """The code cells of a notebook as Python source; IPython magic lines become comments."""
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return ["\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line
                      for line in source.splitlines()) for source in sources]


def execute(path) -> tuple[dict, dict]:
    """Run every code cell of the notebook in order in one namespace, closing its figures after
    each cell as a kernel shows them; return the namespace and, per cell that drew figures, the
    texts of its figures that collide (``conftest.texts_that_collide``)."""
    namespace = {"__name__": "__main__"}
    collisions = {}
    for i, source in enumerate(code_cells(path)):
        exec(compile(source, f"{path.name}, code cell {i}", "exec"), namespace)
        for number in plt.get_fignums():
            fig = plt.figure(number)
            fig.draw_without_rendering()
            collisions[f"code cell {i}, figure {number}"] = texts_that_collide(fig)
        plt.close("all")
    return namespace, collisions


def test_every_notebook_has_checks():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_quick_size_and_its_numbers_hold(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_SIM_QUICK", "1")
    monkeypatch.chdir(tmp_path)  # the notebooks write their results under ./results
    with matplotlib.rc_context():  # the notebooks set the package style globally
        namespace, collisions = execute(path)
    assert collisions and not any(collisions.values()), collisions  # figures that read
    assert namespace["QUICK"] is True
    results = namespace["RESULTS"]
    assert results.is_relative_to(tmp_path)
    assert any(results.glob("*/metrics.parquet"))
    failed = {k: namespace[k] for k, (low, high) in CHECKS[path.stem].items()
              if not low <= namespace[k] <= high}
    assert not failed, failed

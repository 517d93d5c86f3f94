"""The columns a run logs, from the declarations of its parts: the diagnostics of every step
(``diagnostics.STEP_COLUMNS``), the rule's own (``RuleSpec.columns``), the regularised return of
rules with a temperature ``tau``, the optional groups a config names in ``diagnostics``
(``diagnostics.DIAGNOSTICS``), the pass@k columns of binary-reward environments, and the
covariance law's error statistics the summaries derive (``summary.DERIVED_COLUMNS``)."""

from __future__ import annotations

from typing import Mapping

from entropy_sim.diagnostics import DIAGNOSTICS, RETURN_REG, STEP_COLUMNS, pass_at_column
from entropy_sim.diagnostics.summary import DERIVED_COLUMNS
from entropy_sim.parts import Column, RuleSpec, merge


def run_columns(spec: RuleSpec, config: Mapping, binary: bool) -> tuple[Column, ...]:
    """The metric columns of a run of rule ``spec`` under ``config`` (a resolved config: its
    ``pass_at`` and ``diagnostics``), when the environment's rewards are ``binary`` (all 0 or 1)
    or not."""
    extra = [RETURN_REG] if any(h.name == "tau" for h in spec.hparams) else []
    passes = [pass_at_column(k) for k in config["pass_at"]] if binary else []
    groups = [DIAGNOSTICS[name] for name in config["diagnostics"]]
    return merge("columns", spec.name, STEP_COLUMNS, spec.columns, extra, *groups, passes,
                 DERIVED_COLUMNS)

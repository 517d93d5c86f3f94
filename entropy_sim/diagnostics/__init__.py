"""What a run measures: the per-step metrics, the columns a run logs, and statistics over seeds.

- ``metrics``: the predicted and realized entropy change and the other per-step metrics, and the
  optional column groups (``improvement``, ``second_order``); their names are re-exported here.
- ``columns``: the columns a given rule and config log, read off the declarations.
- ``summary``: statistics over seeds (means, standard deviations, quantiles), computed on the
  devices in either output mode.
"""

from entropy_sim.diagnostics.metrics import (DIAGNOSTICS, IMPROVEMENT_COLUMNS, NAN_ALLOWED,
                                             NONFINITE, RETURN_REG, SECOND_ORDER_COLUMNS,
                                             STEP_COLUMNS, TEMPERATURE_COLUMNS, improvement,
                                             pass_at_column, pass_at_k, second_order,
                                             step_metrics, temperature_law)

__all__ = [
    "DIAGNOSTICS", "IMPROVEMENT_COLUMNS", "NAN_ALLOWED", "NONFINITE", "RETURN_REG",
    "SECOND_ORDER_COLUMNS", "STEP_COLUMNS", "TEMPERATURE_COLUMNS", "improvement", "pass_at_column",
    "pass_at_k", "second_order", "step_metrics", "temperature_law",
]

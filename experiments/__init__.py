"""entropy_sim's experiments: one module and one TOML config per claim of docs/theory.md
(the covariance law and the papers' results it states).

    python -m experiments all --quick     # every experiment at quick size
    python -m experiments e1_covariance_law e4_aepo
"""

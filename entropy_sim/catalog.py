"""What exists, read off the declarations: the rules with their hyperparameters and options, the
pieces of the policy-optimisation family, every column a run can log, the environment kinds and
the initial policies with their config fields.

``entropy-sim list [rules|pieces|columns|envs|policies]`` prints these tables; the README's reference tables are
``markdown(...)`` of the same (``tests/test_readme.py`` checks that they agree).
"""

from __future__ import annotations

from entropy_sim import diagnostics, envs, objectives, policies
from entropy_sim.diagnostics import summary
from entropy_sim.parts import REQUIRED, Cases, Column, Field, OneOf
from entropy_sim.rules.registry import RULES

IDENTIFIERS = (Column("seed", "seed index n (full mode)"), Column("step", "step k: the row "
               "describes the update pi_k -> pi_{k+1}"))
SECTIONS = ("rules", "pieces", "columns", "envs", "policies")


def all_columns() -> tuple[Column, ...]:
    """Every column a run can log, in table order: the step's diagnostics, the regularised
    return, pass@k, each rule's own columns, the optional groups of ``diagnostics``, the
    non-finite mark, the summary's derived ones."""
    out = {c.name: c for c in (*IDENTIFIERS, *diagnostics.STEP_COLUMNS, diagnostics.RETURN_REG)}
    out["pass_at_k"] = Column("pass_at_k", "exact pass@k = sum_p rho(p) [1 - (1 - P(correct|p))^k] "
                                           "for each k of pass_at (binary rewards only)")
    for spec in RULES.values():
        for column in spec.columns:
            out.setdefault(column.name, column)
    for group, columns in diagnostics.DIAGNOSTICS.items():
        for column in columns:
            out[column.name] = Column(column.name, f"[diagnostics: {group}] {column.doc}",
                                      column.nan_allowed)
    out[diagnostics.NONFINITE.name] = diagnostics.NONFINITE
    for column in summary.DERIVED_COLUMNS:
        out[column.name] = column
    return tuple(out.values())


def rows(section: str) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of one section's table."""
    if section == "rules":
        header = ["rule", "what it does", "hyperparameters (default; bounds)", "options (default)",
                  "extra columns"]
        body = []
        for spec in RULES.values():
            hps = ", ".join(f"{h.name} ({h.default_text}; {h.bounds})" for h in spec.hparams)
            opts = ", ".join(f"{o.name} ({o.default}; {o.bounds})" for o in spec.options) or "-"
            chain = (" [" + " > ".join(p.name for p in spec.pieces) + "]") if spec.pieces else ""
            body.append([spec.name, spec.summary + chain, hps, opts,
                         ", ".join(spec.column_names) or "-"])
        return header, body
    if section == "pieces":
        header = ["piece", "hooks", "what it does", "hyperparameters and options (default; bounds)",
                  "columns"]
        body = []
        for piece in _pieces():
            roles = [r for r in objectives.HOOKS if getattr(piece, r) is not None]
            hps = ", ".join([f"{h.name} ({h.default_text}; {h.bounds})" for h in piece.hparams]
                            + [f"{o.name} ({o.default}; {o.bounds})" for o in piece.options])
            body.append([piece.name, " + ".join(roles), piece.doc, hps or "-",
                         ", ".join(c.name for c in piece.columns) or "-"])
        return header, body
    if section == "columns":
        return ["column", "meaning"], [[c.name + (" (may be NaN)" if c.nan_allowed else ""), c.doc]
                                       for c in all_columns()]
    if section == "envs":
        return ["kind", "what it is", "fields (default)"], [
            [name, spec.doc.splitlines()[0] if spec.doc else "-", fields_text(spec.fields)]
            for name, spec in envs.registry.KINDS.items()]
    if section == "policies":
        return ["init", "what it is", "fields (default)"], [
            [name, variant.doc, fields_text(variant.fields) or "-"]
            for name, variant in policies.INITS.items()]
    raise ValueError(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")


def fields_text(nodes) -> str:
    """Config fields as text: ``arms (required)``, alternatives as ``either [...] or [...]`` (by the
    key given) and ``generator = uniform: [...] | ...`` (by a field's value)."""
    parts = []
    for node in nodes:
        if isinstance(node, Field):
            parts.append(f"{node.name} ({_default_text(node)})")
        elif isinstance(node, OneOf):
            alternatives = [f"[{fields_text(v.fields)}]" for v in node.alternatives]
            parts.append("either " + " or ".join(alternatives))
        elif isinstance(node, Cases):
            cases = [f"{value}: [{fields_text(v.fields)}]" if v.fields else str(value)
                     for value, v in node.variants.items()]
            parts.append(f"{node.key} = " + " | ".join(cases))
    return ", ".join(parts)


def _default_text(field: Field) -> str:
    if field.default is REQUIRED:
        return "required"
    if field.default is None:
        return "optional"
    if callable(field.default):
        return "from the other fields"
    return repr(field.default) if isinstance(field.default, str) else str(field.default)


def _pieces():
    seen = {}
    for spec in RULES.values():
        for piece in spec.pieces:
            seen.setdefault(piece.name, piece)
    for name in dir(objectives):
        value = getattr(objectives, name)
        if isinstance(value, objectives.Piece):
            seen.setdefault(value.name, value)
    return list(seen.values())


def markdown(section: str) -> str:
    """One section as a Markdown table (names in backticks)."""
    header, body = rows(section)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in body:
        cells = [f"`{row[0]}`"] + [cell.replace("|", "\\|") for cell in row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text(section: str, width: int = 100) -> str:
    """One section as plain text for a terminal: a block per entry."""
    import textwrap
    header, body = rows(section)
    if section == "columns":
        pad = max(len(row[0]) for row in body) + 2
        lines = [textwrap.fill(row[1], width, initial_indent=row[0].ljust(pad),
                               subsequent_indent=" " * pad) for row in body]
        return f"{section} ({len(body)})\n\n" + "\n".join(lines)
    blocks = []
    for row in body:
        lines = [row[0]]
        for name, cell in zip(header[1:], row[1:]):
            lines += textwrap.wrap(f"{name}: {cell}", width, initial_indent="    ",
                                   subsequent_indent="        ")
        blocks.append("\n".join(lines))
    return f"{section} ({len(body)})\n\n" + "\n".join(blocks)

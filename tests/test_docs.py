"""The repository carries its own theory: docs/theory.md, cited by section, and nothing points outside.

A clone must be self-contained: no file may refer to a folder next to the repository or to the
documents the project started from. Every ``docs/theory.md §N`` citation must name a section that
exists, and the column table of docs/theory.md §11 must list exactly the columns the code logs.
"""

from __future__ import annotations

import json
import re
import subprocess

import jax.numpy as jnp
import pytest

import entropy_sim as es
from entropy_sim import diagnostics, envs
from entropy_sim.rules import registry as algorithms
from conftest import ROOT

THEORY = ROOT / "docs" / "theory.md"

# Built from pieces so that this file does not match its own patterns.
OUTSIDE = ["../" + "shared", "shared/" + "THEORY", "THEORY" + ".md", "seeds" + "/0"]

CITATION = re.compile(r"docs/theory\.md`?\)?((?:\s*(?:,|;|and|to|or)?\s*§\s?\d+(?:\.\d+)?)+)")
SECTION_NUMBER = re.compile(r"§\s?(\d+(?:\.\d+)?)")


def repository_files() -> list[str]:
    """Tracked files, and new ones git does not ignore (so a check runs before the commit too)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.splitlines() if (ROOT / p).is_file()]


def text_of(path: str) -> str | None:
    """A file's text (a notebook's cell sources joined, so a citation split over lines is whole);
    None for binary files."""
    data = (ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.endswith(".ipynb"):
        return "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    return text


def theory_sections() -> set[str]:
    """Section numbers of docs/theory.md: ``## N.`` headings and ``### N.M`` subsections."""
    headings = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", THEORY.read_text(), flags=re.M)
    return set(headings)


def column_table() -> set[str]:
    """The column names listed in the first cell of each row of docs/theory.md §11's table."""
    text = THEORY.read_text()
    start = re.search(r"^## 11\. ", text, flags=re.M)
    assert start, "docs/theory.md has no section 11"
    section = text[start.end():]
    end = re.search(r"^## ", section, flags=re.M)
    section = section[:end.start()] if end else section
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def canonical(name: str) -> str:
    """One name per family of columns: ``pass_at_1``, ``pass_at_8``... are ``pass_at_k``."""
    return re.sub(r"^pass_at_\d+$", "pass_at_k", name)


def logged_columns() -> set[str]:
    """Every metric column the code logs, asked of the code itself."""
    # diagnostics.step_metrics and temperature_law on a tiny evaluated contextual bandit.
    env = envs.contextual_bandit([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], [0.6, 0.4])
    theta = jnp.asarray([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
    ev = env.evaluate(theta, 0.0)
    dz = jnp.asarray([[0.1, 0.0, -0.1], [0.05, -0.05, 0.0]])
    columns = set(diagnostics.step_metrics(ev, env.evaluate(theta + dz, 0.0), dz))
    columns |= set(diagnostics.temperature_law(ev, theta, 1.2, 0.1))
    columns |= set(diagnostics.pass_at_k(ev.success, env.rho, (1, 8)))
    # The optional groups (diagnostics = [...]).
    ev_next = env.evaluate(theta + dz, 0.0)
    columns |= set(diagnostics.improvement(ev, ev_next, env.horizon, 0.0))
    columns |= set(diagnostics.second_order(ev, dz, 0.0, 0.0))
    # Each rule's extra columns.
    for spec in algorithms.RULES.values():
        columns |= set(spec.column_names)
    # What the runner adds (the closed form, return_reg with tau, pass@k, the non-finite mark)
    # and the summary's derived error statistics, from a tiny run.
    res = es.run({"seeds": 2, "steps": 2, "pass_at": [1], "on_nonfinite": "mark",
                  "env": {"kind": "token_tree", "vocab": 2, "length": 2, "answers": [[[0, 1]]]},
                  "algo": {"name": "pg_entropy", "eta": 0.1, "tau": 0.1}}, progress=False)
    columns |= set(res.metrics.columns) - {"seed", "step"}
    columns |= set(res.summary()["metric"].unique())
    return {canonical(c) for c in columns}


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in repository_files():
        data = (ROOT / path).read_bytes()
        offenders += [f"{path}: {p}" for p in OUTSIDE if p.encode() in data]
    assert not offenders, "files point outside the repository:\n" + "\n".join(offenders)


def test_the_readme_says_where_the_theory_lives():
    assert THEORY.exists()
    assert "](docs/theory.md)" in (ROOT / "README.md").read_text().split("## Quick start")[0]


def test_every_theory_citation_names_an_existing_section():
    sections = theory_sections()
    assert {str(n) for n in range(1, 12)} <= sections, sorted(sections)
    cited, broken = 0, []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        if path == "docs/theory.md":  # its own cross-references are bare: "(§3.2)"
            numbers = SECTION_NUMBER.findall(text)
        else:
            numbers = [n for group in CITATION.findall(text) for n in SECTION_NUMBER.findall(group)]
        cited += len(numbers)
        broken += [f"{path}: §{n}" for n in numbers if n not in sections]
    assert cited > 50, cited  # the code cites the theory throughout; the pattern must see that
    assert not broken, "citations of missing sections:\n" + "\n".join(broken)


def test_files_that_use_the_theorem_names_cite_the_theory():
    """T1-T4 and Theorem 4.3 are names defined in docs/theory.md: a file using them cites it."""
    names = re.compile(r"\bT[1-4]\b|Theorem 4\.3")
    missing = [path for path in repository_files()
               if path != "docs/theory.md" and (text := text_of(path)) is not None
               and names.search(text) and not CITATION.search(text)]
    assert not missing, "files use T1-T4 or Theorem 4.3 without citing docs/theory.md: " + ", ".join(missing)


def test_the_column_table_lists_exactly_the_columns_the_code_logs():
    table = {canonical(c) for c in column_table()}
    logged = logged_columns()
    assert logged - table == set(), f"logged but not in docs/theory.md §11: {sorted(logged - table)}"
    assert table - logged == set(), f"in docs/theory.md §11 but never logged: {sorted(table - logged)}"

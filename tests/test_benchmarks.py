"""The benchmark scripts' own helpers, and the end-to-end benchmark run at a tiny size (the
benchmarks themselves take minutes and are not tests)."""

import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import accelerator  # noqa: E402

HLO = """HloModule chunk

%fused_negate (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(f32[4]{0} %p)
}

%compare (a: f32[], b: f32[]) -> pred[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %lt = pred[] compare(f32[] %a, f32[] %b), direction=LT
}

%cond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  %k = s32[] constant(10)
  ROOT %c = pred[] compare(s32[] %i, s32[] %k), direction=LT
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  %x = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %t), index=1
  %f = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_negate
  %s = f32[4]{0} sort(f32[4]{0} %f), dimensions={0}, to_apply=%compare
  %b = f32[4]{0} bitcast(f32[4]{0} %s)
  %j = s32[] add(s32[] %i, s32[] %i)
  ROOT %r = (s32[], f32[4]{0}) tuple(s32[] %j, f32[4]{0} %b)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(s32[] %z, f32[4]{0} %x)
  %w = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %init), condition=%cond, body=%body
  ROOT %out = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %w), index=1
}
"""


def test_kernel_count_is_the_unfused_work_of_the_loop_body():
    # The fusion, the sort and the add launch kernels; parameters, tuples, bitcasts do not, and
    # the instructions inside the fused computation and the comparator belong to their callers.
    assert accelerator.count_kernels(HLO) == 3


def test_kernel_count_of_hlo_without_a_loop_is_zero():
    body_free = HLO.split("%body")[0] + "ENTRY %main (x: f32[4]) -> f32[4] {\n" \
        "  ROOT %x = f32[4]{0} parameter(0)\n}\n"
    assert accelerator.count_kernels(body_free) == 0


@pytest.mark.slow
def test_end_to_end_benchmark_runs_at_a_tiny_size_and_prints_the_final_ratio():
    # Two command-line runs (the second loading the first's compiled programs) and the NumPy
    # baseline, each in a fresh process; the last line is the warm run's ratio to the NumPy loop.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"),
                           "--seeds", "200", "--steps", "20", "--rounds", "2"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^last run \(warm cache\) / NumPy loop: (\S+)x \(target <= 2\)$",
                      proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    ratio = float(match.group(1))
    assert math.isfinite(ratio) and ratio > 0

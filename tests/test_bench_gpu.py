"""benchmarks/bench_gpu.py's logic on the CPU (--quick): every section runs and the results are coherent.
The GPU figures themselves come from running it on a GPU (see BENCHMARKS.md)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    out = tmp_path / "res"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick",
                        "--out", str(out), "--budget-s", "900"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {r["streams"] for r in res["streams"]} == {1, 2}
    assert all(r["fps"] > 0 and r["frames"] == 2 * r["streams"] for r in res["streams"])
    assert set(res["memory"]) == {"fp32", "bf16"} and res["memory"]["fp32"]["4"]["bank"] > 0
    assert res["peak"] and all(r["gflop_per_frame"] > 0 for r in res["peak"])
    assert "| model | precision | streams | fps |" in p.stdout
    # the whole job with 1 and 2 streams per actor: every video ok, every frame labelled
    assert [(r["streams_per_actor"], r["rc"], r["videos_ok"], r["frames"]) for r in res["job"]] == [(1, 0, 2, 6),
                                                                                                  (2, 0, 2, 6)]

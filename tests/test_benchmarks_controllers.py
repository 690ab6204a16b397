"""benchmarks/controller_cost.py, interval_ablation.py and controller_variants.py: they run end to end on
small settings and print what they claim (figures from the runs they made, the table and plot of the ablation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          check=True, cwd=ROOT, timeout=300).stdout


def test_controller_cost_times_both_fits_and_sizes_the_copy(tmp_path):
    out = _run("controller_cost.py", "--quick", "--threads", "1", "--table", "SklearnWine", "--schedule", "search",
               "--json", str(tmp_path / "cost.json"))
    assert "time Search / GD, pair by pair: median" in out and "largest snapshot held" in out
    figures = json.loads((tmp_path / "cost.json").read_text())
    assert len(figures["gd_s"]) == len(figures["controller_s"]) == 2 and figures["ratio"] > 0
    # One copy: parameters and buffers once, plus a byte per prunable weight (at most 1.25 x in float32).
    assert 1.0 <= figures["copies"] <= 1.26 and figures["density"] < 1.0


def test_the_interval_ablation_writes_one_table_and_one_plot(tmp_path):
    out = _run("interval_ablation.py", "--out", str(tmp_path), "--benches", "tabular", "--seeds", "2",
               "--datasets", "SklearnWine", "--rules", "guarded", "--criteria", "global", "--quiet")
    rows = [line for line in out.splitlines() if line.startswith("| tabular |")]
    assert len(rows) == 9  # every interval x r0
    assert {r.split(" | ")[3] for r in rows} == {"1", "2", "4"} and {r.split(" | ")[4] for r in rows} == {
        "0.2", "0.4", "0.6"}
    assert (tmp_path / "interval-ablation.png").stat().st_size > 0
    assert "Every(schedule=Guarded(r0=0.4" in json.dumps([json.loads(p.read_text())["config"] for p in
                                                          (tmp_path / "tabular-quick").glob("*/*k2-r0.4/*.json")])
    with pytest.raises(subprocess.CalledProcessError):
        _run("interval_ablation.py", "--out", str(tmp_path), "--rules", "zeta")


def test_controller_variants_trains_each_variant_and_pairs_it_against_gd(tmp_path):
    out = _run("controller_variants.py", "--out", str(tmp_path), "--seeds", "2", "--datasets", "SklearnWine",
               "--quiet", "g-tol0.1=tol=0.1,start_by=None")
    rows = [line for line in out.splitlines() if line.startswith("| SklearnWine |")]
    assert len(rows) == 1 and rows[0].count("±") == 1  # gd and the one variant, paired on 2 seeds
    configs = [json.loads(p.read_text())["config"]["schedule"] for p in (tmp_path / "tabular-quick").glob(
        "SklearnWine/g-tol0.1/*.json")]
    assert len(configs) == 2 and all("tol=0.1," in c and "start_by=None" in c for c in configs)
    for bad in (["nameonly"], ["x=tol=abc"], ["x=nosuch=1"], ["gd=tol=0.1"]):
        with pytest.raises(subprocess.CalledProcessError) as info:
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "controller_variants.py"), "--out",
                            str(tmp_path / "bad"), *bad], capture_output=True, text=True, check=True, cwd=ROOT)
        assert info.value.returncode == 2 and "error:" in info.value.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was trained or written

"""benchmarks/gpu_suite.py: the dry run writes every part's figures and the summary; a part past
its time limit is killed (with what it started) and recorded as timed out while the others'
results are kept; without CUDA the real run refuses at once.

Each test runs the suite as a subprocess, as on a GPU machine: from another directory and without
PYTHONPATH, so the suite itself must put this repository's src/ on the path of its parts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ("prune_step", "sparse24", "compact_gpt", "throughput", "chargpt")
RECORD_KEYS = {"part", "title", "status", "time_limit_s", "seconds", "returncode", "command", "log",
               "output_tail", "figures"}
VERDICTS = {"met", "missed", "reference"}


def run_suite(cwd: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(SUITE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_dry_run_writes_every_part_and_the_summary(tmp_path):
    started = time.monotonic()
    done = run_suite(tmp_path, "--dry-run", "--out", "tmp")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "tmp"

    # The summary is printed: the table of targets and the table of parts.
    assert "## GPU suite summary" in done.stdout
    assert "| target | source | measured | verdict |" in done.stdout
    assert "| part | status | seconds | limit s |" in done.stdout
    assert "Dry run" in done.stdout

    records = {}
    for name in PARTS:
        record = load(out / f"{name}.json")
        assert RECORD_KEYS <= set(record), name
        assert record["part"] == name and (out / record["log"]).is_file()
        assert 0 < record["seconds"] < record["time_limit_s"]
        records[name] = record
    for name in ("prune_step", "compact_gpt", "throughput", "chargpt"):
        assert records[name]["status"] == "ok", (name, records[name]["output_tail"])
        assert records[name]["returncode"] == 0
        assert load(out / "raw" / f"{name}.json") == records[name]["figures"]

    # a. char-GPT: both methods with the figures the docs need.
    chargpt = records["chargpt"]["figures"]
    assert chargpt["config"]["steps"] == 20 and chargpt["device"] == "cpu"
    assert set(chargpt["runs"]) == {"gd", "occam-guarded"}
    for run in chargpt["runs"].values():
        assert {"selection_loss", "best_step", "density"} <= set(run)
        assert run["final_loss"] > 0 and run["tokens_per_s"] > 0
        assert [r["step"] for r in run["history"]] == [10, 20]
    assert chargpt["throughput_ratio"] == pytest.approx(
        chargpt["runs"]["occam-guarded"]["tokens_per_s"] / chargpt["runs"]["gd"]["tokens_per_s"])
    # b. throughput, c. prune step, e. compaction: the scripts' own JSON.
    gpt = records["throughput"]["figures"]["results"]["gpt"]
    assert gpt["ratio"] > 0 and set(gpt["median"]) == {"plain", "occam"}
    prune = records["prune_step"]["figures"]["results"]
    assert set(prune) == {"1M", "2M"} and [r["step"] for r in prune["2M"]["layerwise"]] == [1, 2]
    assert all(r["median"] > 0 for r in prune["2M"]["layerwise"])
    (row,) = records["compact_gpt"]["figures"]["results"]
    assert row["model"] == "gpt" and row["after"]["parameters"] < row["before"]["parameters"]
    assert row["ratio"]["latency"] > 0
    # d. 2:4: ran up to the CUDA check.
    sparse = records["sparse24"]
    if torch.cuda.is_available():
        assert sparse["status"] == "ok"
    else:
        assert sparse["status"].startswith("skipped: needs CUDA") and sparse["figures"] is None
        assert "needs CUDA" in sparse["output_tail"] and sparse["returncode"] == 0

    summary = load(out / "summary.json")
    assert summary["dry_run"] is True and summary["seconds"] <= seconds
    assert list(summary["parts"]) == list(PARTS)
    assert {name: p["status"] for name, p in summary["parts"].items()} == {n: r["status"] for n, r in records.items()}
    assert Path(summary["environment"]["occamgd_file"]).resolve().is_relative_to(ROOT / "src")
    assert len(summary["targets"]) == 6
    for target in summary["targets"]:
        assert target["measured"] in summary["table"] and target["measured"] in done.stdout
        if target["source"].startswith("d.") and not torch.cuda.is_available():
            assert target["verdict"].startswith("not measured") and target["value"] is None
        else:
            assert target["verdict"] in VERDICTS, target
    assert (out / "summary.md").read_text() == summary["table"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended


def test_a_part_past_its_limit_is_killed_and_the_others_are_kept(tmp_path):
    started = time.monotonic()
    # _sleep (test-only) writes partial figures, starts a child, then sleeps 600 s; chargpt gets
    # too little time to finish; prune_step runs between them.
    done = run_suite(tmp_path, "--dry-run", "--out", "tmp", "--parts", "_sleep", "prune_step", "chargpt",
                     "--part-timeout", "_sleep=2", "chargpt=0.5", timeout=90)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "tmp"

    sleeper = load(out / "_sleep.json")
    assert sleeper["status"] == "timed out" and sleeper["returncode"] is None
    assert sleeper["time_limit_s"] == 2 and 2 <= sleeper["seconds"] < 15
    # What it wrote before it was killed is kept: its figures and its output.
    assert sleeper["figures"]["partial"] is True
    assert "partial figures written" in sleeper["output_tail"]
    assert "killed after 2.0 s" in (out / "logs" / "_sleep.log").read_text()
    # Everything it started was killed with it.
    child = sleeper["figures"]["child_pid"]
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)

    chargpt = load(out / "chargpt.json")
    assert chargpt["status"] == "timed out" and chargpt["time_limit_s"] == 0.5

    prune = load(out / "prune_step.json")
    assert prune["status"] == "ok" and prune["figures"]["results"]["2M"]["layerwise"][0]["median"] > 0

    summary = load(out / "summary.json")
    assert list(summary["parts"]) == ["_sleep", "prune_step", "chargpt"]
    assert summary["parts"]["_sleep"]["status"] == "timed out"
    verdicts = [(t["source"][:2], t["verdict"]) for t in summary["targets"]]
    assert [v for s, v in verdicts if s == "a."] == ["not measured (timed out)"] * 2
    assert [v for s, v in verdicts if s == "c."][0] in ("met", "missed")
    assert "| _sleep | timed out |" in done.stdout
    assert elapsed < 60  # killed at its limit, not waited for


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_real_run_refuses_at_once(tmp_path):
    done = run_suite(tmp_path, "--out", "tmp", timeout=60)
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "--dry-run" in done.stderr
    summary = load(tmp_path / "tmp" / "summary.json")
    assert summary["parts"] == {} and any("CUDA is not available" in e for e in summary["error"])
    assert [p.name for p in (tmp_path / "tmp").glob("*.json")] == ["summary.json"]
    assert not (tmp_path / "tmp" / "raw").exists()

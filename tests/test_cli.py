"""The command line: `occamgd demo` end to end on bundled data, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from occamgd import __version__
from occamgd.cli import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, main


def test_demo_prints_every_method_and_writes_the_bench_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--dataset", "iris", "--epochs", "3", "--seeds", "2", "--out", str(out), "--quiet"])
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    for method in ("gd", "occam", "occam-val", "occam-guarded"):
        assert f"\n{method} " in printed
    assert "±" in printed
    root = out / "demo-e3"  # the demo is the bench's demo task: its runs, records and report
    records = [json.loads(p.read_text()) for p in root.glob("iris/*/seed*.json")]
    counts = {m: sum(r["method"] == m for r in records) for m in ("gd", "occam", "occam-val", "occam-guarded")}
    assert counts == {"gd": 2, "occam": 2, "occam-val": 2, "occam-guarded": 2}
    assert all(r["density"] == 1.0 for r in records if r["method"] == "gd")
    assert all(r["density"] < 1.0 for r in records if r["method"] == "occam")
    assert (root / "iris-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method |" in (root / "results.md").read_text()
    assert f"wrote {root / 'results.md'}" in printed
    assert not list(out.rglob("*.tmp"))


def test_demo_bad_seeds_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    code = main(["demo", "--seeds", "0", "--out", str(tmp_path / "x"), "--quiet"])
    assert code == EXIT_BAD_INPUT
    assert "seeds must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_is_refused_by_the_parser():
    with pytest.raises(SystemExit) as info:
        main(["demo", "--dataset", "mnist"])
    assert info.value.code == 2


def test_console_entry_point_reports_its_version():
    done = subprocess.run([sys.executable, "-m", "occamgd.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.strip() == f"occamgd {__version__}"


def test_a_disk_error_exits_1_with_a_message_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["demo", "--epochs", "1", "--seeds", "1", "--quiet", "--out", str(blocker / "out")])
    assert code == EXIT_ERROR
    assert capsys.readouterr().err.startswith("occamgd: error:")


@pytest.mark.parametrize("argv, message", [
    (["bench", "char-gpt", "--epochs", "3"], "counts steps, not epochs"),
    (["bench", "tabular", "--steps", "3"], "counts epochs, not steps"),
    (["bench", "tabular", "--gpu"], "does not take the options ['gpu']; accepted: manifest"),
    (["bench", "char-gpt", "--gpu", "--corpus", "x.txt"], "CUDA"),
    (["bench", "tabular", "--epochs", "0"], "a number of epochs, an integer >= 1; got 0"),
    (["bench", "char-gpt", "--methods", "gd+prune"], "'gd+prune' is not offered by task 'char-gpt'"),
])
def test_bench_options_of_the_wrong_task_are_refused_before_any_work(argv, message, capsys):
    if "--gpu" in argv and "char-gpt" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    assert main(argv) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_a_library_bug_is_not_reported_as_bad_input(monkeypatch, tmp_path):
    # A ValueError that occamgd did not raise as a refusal is a fault: it keeps its traceback
    # (the console script then exits 1), it is not dressed up as exit code 2.
    import occamgd.bench.demo

    def broken(**kwargs):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(occamgd.bench.demo, "run", broken)
    with pytest.raises(ValueError, match="internal shape mismatch"):
        main(["demo", "--out", str(tmp_path / "x"), "--quiet"])


def test_occamgds_own_refusals_are_bad_input(capsys):
    from occamgd.errors import InvalidValueError, OccamgdError

    assert issubclass(InvalidValueError, ValueError) and issubclass(InvalidValueError, OccamgdError)
    assert main(["bench", "tabular", "--seeds", "0", "--quiet"]) == EXIT_BAD_INPUT
    assert "seeds must be an integer >= 1, got 0" in capsys.readouterr().err

"""Issue 16's property: on any messy CSV, ``occamgd fit`` either succeeds with finite predictions or
exits 2 with a message; never a traceback, never a file lost.

Hypothesis writes CSVs with ragged rows, duplicate, empty or unicode names, mixed types, huge and
non-finite numbers, empty cells, a one-class target, non-UTF-8 bytes, and points ``--out`` (with
or without ``--force``) at a new path, the CSV itself, the current directory or a directory of the
user's. Before and after each run every file in the example's directory is checksummed.

80 derandomised examples by default (well under a minute); ``MESSY_EXAMPLES=500 MESSY_RANDOM=1``
hunts with fresh random ones.
"""

from __future__ import annotations

import csv
import io
import math
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _safety import checksums
from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN_NAMES = ["x", "y", "label", "ünï", "名前", "a,b", 'q"q', "=SUM(A1)", " pos"]
MESSY_NAMES = ["", "x", " x", "y"]
NUMBER = st.floats(-100, 100, allow_nan=False).map(lambda v: repr(round(v, 3)))
WHOLE = st.integers(-3, 3).map(str)
TEXT = st.sampled_from(["red", "blue", " pos", "pos", "=cmd|' /C calc'!A0", "@x", "-x", "ünï", "名", "a\nb", '"'])
JUNK = st.sampled_from(["1e300", "-1e308", "1e-320", "inf", "-inf", "nan", "NaN", "Infinity", "1e999", " 1", "1.0",
                        "", "n/a", "big"])
def _rarely(n: int):
    """True about once in n + 1 draws (sampled_from leans to its first entry, False)."""
    return st.sampled_from([False] * n + [True])


KINDS = {"number": NUMBER, "whole": WHOLE, "text": TEXT, "mixed": st.one_of(NUMBER, TEXT)}


@st.composite
def messy(draw):
    width = draw(st.integers(2, 4))
    if draw(_rarely(5)):
        header = [draw(st.sampled_from(CLEAN_NAMES + MESSY_NAMES)) for _ in range(width)]
    else:
        header = draw(st.lists(st.sampled_from(CLEAN_NAMES), min_size=width, max_size=width, unique=True))
    kinds = [draw(st.sampled_from(sorted(KINDS))) for _ in range(width)]
    junk_rate = draw(st.sampled_from([0, 0, 0, 20, 60]))  # one cell in N is junk (0: none)
    rows = [[draw(JUNK) if junk_rate and draw(_rarely(junk_rate)) else draw(KINDS[k]) for k in kinds]
            for _ in range(draw(st.integers(0, 30)))]
    if rows and draw(_rarely(6)):  # one ragged row: a field short or one too many
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = rows[i][:-1] if draw(st.booleans()) else rows[i] + ["extra"]
    if draw(_rarely(4)) and rows:  # a target of one class, or of two clean ones
        column = draw(st.integers(0, width - 1))
        labels = draw(st.sampled_from([["a"], ["a", "b"], ["1", "2"], ["1", "1.0"]]))
        for i, row in enumerate(rows):
            if column < len(row):
                row[column] = labels[i % len(labels)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    data = text.getvalue().encode("utf-8")
    if draw(_rarely(19)):
        data += b"caf\xe9," * (width - 1) + b"x\n"  # latin-1 bytes
    target = draw(st.sampled_from(header + ["missing"] if draw(_rarely(9)) else header))
    weird = ["nested/deeper/new", "data.csv", ".", "mine", "notes.txt", "mine/model", "notes.txt/model"]
    out = draw(st.sampled_from(weird)) if draw(_rarely(3)) else "new"
    force = draw(st.booleans())
    return data, target, out, force


def _finite_predictions(text: str) -> None:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    numeric = [i for i, name in enumerate(header) if name.startswith("proba_")] or [0]
    for row in body:
        for i in numeric:
            assert math.isfinite(float(row[i])), row


@settings(max_examples=int(os.environ.get("MESSY_EXAMPLES", 80)), deadline=None, derandomize=not os.environ.get("MESSY_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=messy())
def test_fit_on_a_messy_csv_succeeds_or_refuses_cleanly_and_loses_nothing(case, tmp_path_factory, capsys):
    data, target, out, force = case
    root = tmp_path_factory.mktemp("messy")
    (root / "data.csv").write_bytes(data)
    (root / "notes.txt").write_text("the user's notes")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("years of work")
    before = checksums(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        capsys.readouterr()
        code = main(["fit", "data.csv", "--target", target, "--out", out, "--epochs", "2", "--hidden", "8",
                     "--quiet", *(["--force"] if force else [])])
        err = capsys.readouterr().err
        assert code in (EXIT_OK, EXIT_BAD_INPUT), err
        event(f"exit {code}: {err.splitlines()[-1][:60] if err else ''}")
        if code == EXIT_BAD_INPUT:
            last = err.splitlines()[-1]
            assert last.startswith("occamgd: error: ") and len(last) > 30, err
        else:
            assert main(["predict", out, "data.csv"]) == EXIT_OK
            _finite_predictions(capsys.readouterr().out)
        after = checksums(root)
        assert {name: after.get(name) for name in before} == before
        assert not [p for p in os.listdir(root) if p.startswith(".")]  # no temporary leftovers
    finally:
        os.chdir(cwd)

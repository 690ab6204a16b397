"""Class 1 of issue 16: no command deletes or overwrites a file the user owns.

``--force`` replaces only a directory occamgd wrote; no command writes over an input it reads or
into a model directory it reads (compared after resolving symlinks); an existing output file is
replaced only when asked; an impossible ``--out`` is refused before any training.
"""

from __future__ import annotations

import os

import pytest

import occamgd.modeldir as modeldir
from _safety import FAST, checksums, small_csv
from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("one_thread")


def _refused(args, capsys, *says: str) -> str:
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("occamgd: error: "), err
    for s in says:
        assert s in err, err
    return err


@pytest.fixture
def data(tmp_path):
    return small_csv(tmp_path / "data.csv")


@pytest.fixture
def model(tmp_path, data):
    out = tmp_path / "model"
    assert main(["fit", str(data), "--target", "label", "--out", str(out), *FAST]) == EXIT_OK
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: the refusals below must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(modeldir, "_estimator", refuse)


# fit --force --------------------------------------------------------------------------------
def test_force_does_not_delete_a_directory_occamgd_did_not_write(tmp_path, data, capsys, no_training):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "chapters" / "one.tex").write_text("years of work")
    (thesis / "report.json").write_text("{}")  # a file that happens to share a name
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(thesis), "--force", *FAST], capsys,
             str(thesis), "not a model directory written by occamgd")
    assert checksums(tmp_path) == before


def test_force_does_not_replace_the_training_csv(tmp_path, data, capsys, no_training):
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(data), "--force", *FAST], capsys, str(data))
    assert checksums(tmp_path) == before


def test_force_does_not_replace_a_file(tmp_path, data, capsys, no_training):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(notes), "--force", *FAST], capsys,
             str(notes), "is a file")
    assert checksums(tmp_path) == before


def test_force_does_not_replace_a_model_directory_holding_the_users_files(model, data, tmp_path, capsys,
                                                                          no_training):
    (model / "my-notes.md").write_text("what I tried")
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(model), "--force", *FAST], capsys,
             "my-notes.md")
    assert checksums(tmp_path) == before


def test_force_does_not_replace_the_directory_holding_the_training_csv(model, tmp_path, capsys, no_training):
    inside = model / "data.csv"
    small_csv(inside)
    before = checksums(tmp_path)
    _refused(["fit", str(inside), "--target", "label", "--out", str(model), "--force", *FAST], capsys,
             str(inside))
    assert checksums(tmp_path) == before


def test_force_does_not_follow_a_symlink_to_the_training_csv(tmp_path, data, capsys, no_training):
    link = tmp_path / "link"
    link.symlink_to(data)
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(link), "--force", *FAST], capsys)
    assert checksums(tmp_path) == before and link.is_symlink()


def test_force_replaces_a_model_directory_occamgd_wrote(model, data, tmp_path):
    (model / "curves.png").write_bytes(b"\x89PNG")  # written by occamgd report: also occamgd's
    assert main(["fit", str(data), "--target", "label", "--out", str(model), "--seed", "3", "--force",
                 *FAST]) == EXIT_OK
    assert '"seed": 3' in (model / "report.json").read_text()
    assert not (model / "curves.png").exists()


def test_force_refuses_a_model_directory_whose_report_is_not_occamgds(model, data, tmp_path, capsys, no_training):
    (model / "report.json").write_text('{"format": "something else"}')
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(model), "--force", *FAST], capsys,
             "not a model directory written by occamgd")
    assert checksums(tmp_path) == before


# impossible --out, refused before training ---------------------------------------------------
@pytest.mark.parametrize("where", ["under-a-file", "dot", "proc", "empty"])
def test_an_impossible_out_is_refused_before_training(tmp_path, data, capsys, no_training, where, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = {"under-a-file": str(data / "model"), "dot": ".", "proc": "/proc/occamgd-model", "empty": ""}[where]
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", out, "--force", *FAST], capsys)
    assert checksums(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_is_refused_before_training(tmp_path, data, capsys, no_training):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(["fit", str(data), "--target", "label", "--out", str(locked / "m"), *FAST], capsys, str(locked))
    finally:
        locked.chmod(0o700)


def test_a_failed_fit_removes_the_parent_directories_it_created(tmp_path, data, capsys):
    out = tmp_path / "a" / "b" / "model"
    _refused(["fit", str(data), "--target", "nope", "--out", str(out), *FAST], capsys, "'nope'")
    assert not (tmp_path / "a").exists()


# predict --out ------------------------------------------------------------------------------
def test_predict_does_not_overwrite_its_input(model, data, tmp_path, capsys):
    before = checksums(tmp_path)
    for extra in ([], ["--force"]):
        _refused(["predict", str(model), str(data), "--out", str(data), *extra], capsys, str(data))
    assert checksums(tmp_path) == before


def test_predict_does_not_overwrite_its_input_through_a_symlink(model, data, tmp_path, capsys):
    link = tmp_path / "out.csv"
    link.symlink_to(data)
    before = checksums(tmp_path)
    _refused(["predict", str(model), str(data), "--out", str(link), "--force"], capsys)
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("name", ["model.safetensors", "report.json", "new.csv"])
def test_predict_does_not_write_into_the_model_directory(model, data, tmp_path, capsys, name):
    before = checksums(tmp_path)
    _refused(["predict", str(model), str(data), "--out", str(model / name), "--force"], capsys, str(model))
    assert checksums(tmp_path) == before


def test_predict_replaces_an_existing_output_only_when_forced(model, data, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    out.write_text("my old results")
    _refused(["predict", str(model), str(data), "--out", str(out)], capsys, str(out), "--force")
    assert out.read_text() == "my old results"
    assert main(["predict", str(model), str(data), "--out", str(out), "--force"]) == EXIT_OK
    assert out.read_text().startswith("label,")


def test_predict_into_a_directory_says_so(model, data, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    _refused(["predict", str(model), str(data), "--out", str(tmp_path / "results")], capsys, "is a directory")


def test_predict_under_a_file_is_refused(model, data, tmp_path, capsys):
    _refused(["predict", str(model), str(data), "--out", str(data / "p.csv")], capsys, str(data))


# report --plot ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "report.json", "preprocessing.json", "other.png"])
def test_report_does_not_write_into_the_model_directory(model, tmp_path, capsys, name):
    before = checksums(tmp_path)
    _refused(["report", str(model), "--plot", str(model / name), "--force"], capsys, str(model))
    assert checksums(tmp_path) == before


def test_report_writes_and_rewrites_its_own_default_plot(model, capsys):
    assert main(["report", str(model)]) == EXIT_OK
    assert main(["report", str(model)]) == EXIT_OK  # curves.png is the directory's own file
    assert (model / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_replaces_an_existing_plot_only_when_forced(model, tmp_path, capsys):
    plot = tmp_path / "plot.png"
    plot.write_text("my figure")
    _refused(["report", str(model), "--plot", str(plot)], capsys, str(plot), "--force")
    assert plot.read_text() == "my figure"
    assert main(["report", str(model), "--plot", str(plot), "--force"]) == EXIT_OK
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_report_does_not_write_through_a_symlink_into_the_model(model, tmp_path, capsys):
    link = tmp_path / "plot.png"
    link.symlink_to(model / "model.safetensors")
    before = checksums(tmp_path)
    _refused(["report", str(model), "--plot", str(link), "--force"], capsys)
    assert checksums(tmp_path) == before


# Paths that walk out and back, and names a file system refuses ---------------------------------
def test_force_through_dot_dot_replaces_the_model_and_loses_nothing(model, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "data.csv", "--target", "label", "--out", "model/../model", "--seed", "4", "--force",
                 *FAST]) == EXIT_OK
    assert '"seed": 4' in (model / "report.json").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_model_directory_is_not_written_inside_another(model, data, tmp_path, capsys, no_training):
    before = checksums(tmp_path)
    _refused(["fit", str(data), "--target", "label", "--out", str(model / "inner"), *FAST], capsys,
             "inside the model directory")
    assert checksums(tmp_path) == before


def test_a_failed_rename_puts_the_old_model_back(model, data, tmp_path, monkeypatch, capsys):
    before = checksums(model)
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp") and os.path.isdir(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(modeldir.os, "replace", failing)
    assert main(["fit", str(data), "--target", "label", "--out", str(model), "--seed", "5", "--force", *FAST]) == 1
    assert checksums(model) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("command", ["fit", "predict", "report"])
def test_a_name_too_long_for_the_file_system_is_refused(model, data, tmp_path, capsys, command):
    long = str(tmp_path / ("x" * 300))
    args = {"fit": ["fit", str(data), "--target", "label", "--out", long, *FAST],
            "predict": ["predict", str(model), str(data), "--out", long],
            "report": ["report", str(model), "--plot", long]}[command]
    _refused(args, capsys, "at most 255 bytes")


@pytest.mark.parametrize("command", ["predict", "report"])
def test_an_unwritable_output_file_is_refused_up_front(model, data, capsys, command):
    args = {"predict": ["predict", str(model), str(data), "--out", "/proc/p.csv"],
            "report": ["report", str(model), "--plot", "/proc/p.png"]}[command]
    _refused(args, capsys, "cannot be written")


def test_a_holdback_that_leaves_nothing_to_train_on_is_refused_before_training(data, tmp_path, capsys,
                                                                               no_training):
    _refused(["fit", str(data), "--target", "label", "--out", str(tmp_path / "m"), "--holdback", "0.99", *FAST],
             capsys, "leaving none to train on")

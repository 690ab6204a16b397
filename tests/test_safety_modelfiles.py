"""Class 3 of issue 16: untrusted model files cannot hurt.

Every size read from a file is checked against the data actually present before anything is
allocated; weights are checked finite; a model directory records the SHA-256 of its files and
verifies it on load; a report from another model is refused.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from _safety import FAST, small_csv

import occamgd.models
from occamgd import export
from occamgd.cli import EXIT_BAD_INPUT, EXIT_OK, main
from occamgd.errors import InvalidValueError
from occamgd.modeldir import load_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    return small_csv(tmp_path / "data.csv")


def _fit(tmp_path, data, name="model", *extra):
    out = tmp_path / name
    assert main(["fit", str(data), "--target", "label", "--out", str(out), *FAST, *extra]) == EXIT_OK
    return out


@pytest.fixture
def model(tmp_path, data):
    return _fit(tmp_path, data)


@pytest.fixture
def no_big_network(monkeypatch):
    """Record every TabularMLP built: none may be built from sizes the weights do not hold."""
    built = []
    real = occamgd.models.TabularMLP

    def recording(in_features, classes, hidden=(256, 256), dropout=0.0):
        built.append((in_features, classes, tuple(hidden)))
        if in_features * max(hidden) > 10**7:
            raise AssertionError(f"a network of {in_features} x {hidden} was built from the report")
        return real(in_features, classes, hidden=hidden, dropout=dropout)

    monkeypatch.setattr(occamgd.models, "TabularMLP", recording)
    return built


def _edit_report(model, **changes):
    report = json.loads((model / "report.json").read_text())
    for key, value in changes.items():
        report["model"][key] = value
    (model / "report.json").write_text(json.dumps(report))


def _refused(args, capsys, *says):
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("occamgd: error: "), err
    for s in says:
        assert s in err, err
    return err


# Sizes in report.json ------------------------------------------------------------------------
@pytest.mark.parametrize("changes", [{"in_features": 10**12}, {"hidden": [8000, 8000]}, {"outputs": 10**9}])
def test_sizes_in_the_report_are_checked_against_the_weights_before_building(model, data, capsys, no_big_network,
                                                                            changes):
    _edit_report(model, **changes)
    t0 = time.perf_counter()
    _refused(["predict", str(model), str(data)], capsys, "report.json", "model.safetensors")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("value", ["8", 8.5, -3, True, None, [8]])
def test_sizes_of_the_wrong_type_are_refused_by_name(model, data, capsys, value):
    _edit_report(model, in_features=value)
    _refused(["predict", str(model), str(data)], capsys, "in_features")


@pytest.mark.parametrize("field, value", [("history", {"a": 1}), ("history", [{"epoch": "x"}]), ("density", "high"),
                                          ("data", []), ("best_epoch", 99)])
def test_a_malformed_report_is_refused_not_a_traceback(model, capsys, field, value):
    report = json.loads((model / "report.json").read_text())
    report[field] = value
    (model / "report.json").write_text(json.dumps(report))
    _refused(["report", str(model)], capsys, field)


# export.load trusts nothing -----------------------------------------------------------------
def _sparse_with_shapes(path, shapes: dict, tensors: dict):
    header = {"format": export.FORMAT_NAME, "format_version": str(export.EXPORT_FORMAT), "layout": "sparse",
              "metadata": "{}", "shapes": json.dumps(shapes)}
    save_file(tensors, str(path), metadata=header)


def test_a_tiny_file_cannot_ask_for_a_huge_tensor(tmp_path):
    path = tmp_path / "bomb.safetensors"
    _sparse_with_shapes(path, {"w": [2**20, 2**20]},
                        {"values/w": torch.zeros(0), "indices/w": torch.zeros(0, dtype=torch.int32)})
    assert path.stat().st_size < 400
    t0 = time.perf_counter()
    with pytest.raises(InvalidValueError, match=r"'w'.*\[1048576, 1048576\]"):
        export.load(path)
    assert time.perf_counter() - t0 < 2


def test_loading_into_a_model_checks_the_recorded_shapes_against_it_first(tmp_path):
    path = tmp_path / "bomb.safetensors"
    _sparse_with_shapes(path, {"0.weight": [2**20, 2**20], "0.bias": [4]},
                        {"values/0.weight": torch.zeros(0), "indices/0.weight": torch.zeros(0, dtype=torch.int32),
                         "values/0.bias": torch.zeros(0), "indices/0.bias": torch.zeros(0, dtype=torch.int32)})
    with pytest.raises(InvalidValueError, match=r"0.weight: \(1048576, 1048576\) in the export"):
        export.load_into(nn.Sequential(nn.Linear(3, 4)), path)


def test_a_large_sparse_tensor_within_the_given_limit_loads(tmp_path):
    path = tmp_path / "ok.safetensors"
    _sparse_with_shapes(path, {"w": [300, 300]},
                        {"values/w": torch.ones(1), "indices/w": torch.tensor([5], dtype=torch.int32)})
    with pytest.raises(InvalidValueError, match="max_elements"):
        export.load(path, max_elements=1000)
    assert export.load(path).state_dict["w"].sum() == 1


@pytest.mark.parametrize("shape", [[-1], [2.5], ["3"], [True], "12", [[2]]])
def test_recorded_shapes_that_are_not_sizes_are_refused(tmp_path, shape):
    path = tmp_path / "bad.safetensors"
    _sparse_with_shapes(path, {"w": shape}, {"values/w": torch.zeros(0), "indices/w": torch.zeros(0, dtype=torch.int32)})
    with pytest.raises(InvalidValueError, match="'w'"):
        export.load(path)


@pytest.mark.parametrize("layout", export.LAYOUTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, layout, bad):
    net = nn.Sequential(nn.Linear(3, 4))
    with torch.no_grad():
        net[0].weight[1, 2] = bad
    masks = {"0.weight": torch.ones(4, 3, dtype=torch.bool)}
    path = tmp_path / "m.safetensors"
    (export.save_dense if layout == "dense" else export.save_sparse)(net, masks, path)
    with pytest.raises(InvalidValueError, match="'0.weight'.*1 non-finite"):
        export.load(path)
    assert torch.isnan(export.load(path, check_finite=False).state_dict["0.weight"]).any() or bad == float("inf")


def test_non_standard_json_metadata_is_refused_on_save(tmp_path):
    with pytest.raises(InvalidValueError, match="JSON"):
        export.save_dense(nn.Linear(2, 2), None, tmp_path / "m.safetensors", metadata={"loss": float("nan")})


# Checksums and provenance --------------------------------------------------------------------
def _rewrite_weights(model, change):
    path = model / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    change(tensors)
    save_file(tensors, str(path), metadata=header)


def test_the_report_records_the_checksum_of_every_file(model):
    import hashlib

    report = json.loads((model / "report.json").read_text())
    for name in ("model.safetensors", "model.sparse.safetensors", "preprocessing.json"):
        assert report["sha256"][name] == hashlib.sha256((model / name).read_bytes()).hexdigest()


def test_nan_weights_are_refused_not_one_class_for_every_row(model, data, capsys):
    def poison(tensors):
        tensors["weights/out.weight"][0, 0] = float("nan")

    _rewrite_weights(model, poison)
    _refused(["predict", str(model), str(data)], capsys, "model.safetensors", "checksum")
    # Also when the checksum was updated to match: the weights themselves are checked.
    import hashlib

    report = json.loads((model / "report.json").read_text())
    report["sha256"]["model.safetensors"] = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    (model / "report.json").write_text(json.dumps(report))
    _refused(["predict", str(model), str(data)], capsys, "non-finite", "out.weight")


def test_a_changed_preprocessing_file_is_refused(model, data, capsys):
    pre = json.loads((model / "preprocessing.json").read_text())
    pre["mean"][0] += 1.0
    (model / "preprocessing.json").write_text(json.dumps(pre))
    _refused(["predict", str(model), str(data)], capsys, "preprocessing.json", "checksum")


def test_a_report_from_another_model_is_refused(tmp_path, data, capsys):
    a = _fit(tmp_path, data, "a")
    b = _fit(tmp_path, data, "b", "--seed", "1")  # same shapes, other weights
    (b / "report.json").write_bytes((a / "report.json").read_bytes())
    _refused(["predict", str(b), str(data)], capsys, "report.json", "another model")
    # Also with its checksums and model id removed: the weights still name their model.
    report = json.loads((b / "report.json").read_text())
    del report["sha256"], report["model_id"]
    (b / "report.json").write_text(json.dumps(report))
    _refused(["predict", str(b), str(data)], capsys, "report.json", "another model")


def test_an_older_directory_without_checksums_loads_with_a_warning(model, data, capsys):
    report = json.loads((model / "report.json").read_text())
    del report["sha256"], report["model_id"]
    (model / "report.json").write_text(json.dumps(report))
    path = model / "model.safetensors"  # nor did its weights record a model id
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    header["metadata"] = json.dumps({k: v for k, v in json.loads(header["metadata"]).items() if k != "model_id"})
    save_file(tensors, str(path), metadata=header)
    assert main(["predict", str(model), str(data)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "occamgd: warning:" in err and "records no checksums" in err
    with pytest.warns(UserWarning, match="no checksums"):
        load_model_dir(model)


# preprocessing.json is data, checked like any input -----------------------------------------
@pytest.mark.parametrize("field, value", [
    ("mean", ["a"]), ("scale", [0.0]), ("scale", [-1.0]), ("columns", "size"), ("numeric", {"size": "x"}),
    ("categorical", {"colour": [1, 2]}), ("classes", ["big"]), ("task", "ranking"), ("columns", ["size", "size"]),
])
def test_a_malformed_preprocessing_file_is_refused_by_field(model, data, capsys, field, value):
    import hashlib

    pre = json.loads((model / "preprocessing.json").read_text())
    pre[field] = value
    (model / "preprocessing.json").write_text(json.dumps(pre))
    report = json.loads((model / "report.json").read_text())
    report["sha256"]["preprocessing.json"] = hashlib.sha256((model / "preprocessing.json").read_bytes()).hexdigest()
    (model / "report.json").write_text(json.dumps(report))
    _refused(["predict", str(model), str(data)], capsys, "preprocessing.json", field)

"""Export of pruned models: both layouts restore identical outputs, sizes are measured, bad files refused."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from occamgd import Occam, export


def _pruned(seed: int = 0, steps: int = 4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    occam = Occam(model, torch.optim.SGD(model.parameters(), lr=0.1), schedule="paper")
    for _ in range(steps):
        occam.step(1.0)
    return model, occam


def _fresh(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize("layout", export.LAYOUTS)
def test_both_layouts_restore_identical_outputs_masks_and_metadata(tmp_path, layout):
    model, occam = _pruned()
    sizes = export.save(model, occam.masks, tmp_path, metadata={"epochs": 3, "note": "x"})
    other = _fresh()
    x = torch.randn(64, 20)
    assert not torch.equal(other(x), model(x))
    masks = export.load_into(other, tmp_path / sizes[layout]["file"])
    assert torch.equal(other(x), model(x))
    assert set(masks) == set(occam.masks)
    assert all(torch.equal(masks[k], occam.masks[k]) for k in masks)
    assert export.load(tmp_path / sizes[layout]["file"]).metadata == {"epochs": 3, "note": "x"}


def test_reported_sizes_are_the_files_sizes_and_the_sparse_one_is_smaller(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 256), nn.ReLU(), nn.Linear(256, 10))
    occam = Occam(model, schedule="paper")
    for _ in range(5):
        occam.step(1.0)  # density 0.6^5 ≈ 0.08
    sizes = export.save(model, occam.masks, tmp_path)
    for entry in sizes.values():
        assert entry["bytes"] == (tmp_path / entry["file"]).stat().st_size
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert sizes["dense"]["bytes"] > weights  # every weight plus the masks
    # kept values (8 % of 4 bytes) plus one bit per weight (3 % of 4 bytes), plus the biases
    assert sizes["sparse"]["bytes"] < 0.15 * weights
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sparse_layout_picks_indices_for_very_sparse_tensors_and_bits_otherwise(tmp_path):
    model = _fresh()
    masks = {"0.weight": torch.rand(32, 20) < 0.5, "2.weight": torch.zeros(32 * 3, dtype=torch.bool).index_fill(0, torch.tensor([5]), True).reshape(3, 32)}
    with torch.no_grad():
        for name, mask in masks.items():
            dict(model.named_parameters())[name].mul_(mask)
    export.save_sparse(model, masks, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"bitmask/0.weight", "indices/2.weight", "weights/0.bias", "weights/2.bias"} <= names
    assert "weights/0.weight" not in names
    other = _fresh(3)
    export.load_into(other, tmp_path / "m.safetensors")
    x = torch.randn(8, 20)
    assert torch.equal(other(x), model(x))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    density=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_sparse_round_trip_is_exact_for_any_shape_density_and_dtype(tmp_path_factory, shape, density, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    weight = torch.randn(shape, generator=g).to(dtype) * mask
    path = tmp_path_factory.mktemp("p") / "w.safetensors"
    export.save_sparse({"w": weight, "b": torch.ones(2)}, {"w": mask}, path)
    back = export.load(path)
    assert back.layout == "sparse"
    assert back.state_dict["w"].dtype == dtype
    assert torch.equal(back.state_dict["w"], weight)
    assert torch.equal(back.masks["w"], mask)
    assert torch.equal(back.state_dict["b"], torch.ones(2))


def test_sparse_save_refuses_weights_that_their_mask_prunes(tmp_path):
    model = _fresh()
    masks = {"0.weight": torch.rand(32, 20) < 0.5}
    with pytest.raises(ValueError, match=r"'0.weight' has \d+ non-zero weights where its mask prunes"):
        export.save_sparse(model, masks, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "masks, error, message",
    [
        ({"nope.weight": torch.ones(2, dtype=torch.bool)}, ValueError, "masks name tensors the model does not have"),
        ({"0.weight": torch.ones(20, 32, dtype=torch.bool)}, ValueError, r"shape \(20, 32\) but the tensor has shape \(32, 20\)"),
        ({"0.weight": torch.ones(32, 20)}, TypeError, "must be a bool tensor"),
    ],
)
def test_masks_that_do_not_fit_are_refused_before_writing(tmp_path, masks, error, message):
    with pytest.raises(error, match=message):
        export.save(_fresh(), masks, tmp_path)
    assert not list(tmp_path.iterdir())


def test_loading_into_another_architecture_names_the_tensors_and_changes_nothing(tmp_path):
    model, occam = _pruned()
    export.save_dense(model, occam.masks, tmp_path / "m.safetensors")
    wider = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 3), nn.Linear(3, 3))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError) as info:
        export.load_into(wider, tmp_path / "m.safetensors")
    text = str(info.value)
    assert "missing tensors ['3.bias', '3.weight']" in text
    assert "0.weight: (32, 20) in the export" in text and "(40, 20) in the model" in text
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())


def test_a_newer_format_version_is_refused_with_both_versions(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"weights/w": torch.ones(2)}, str(path),
              metadata={"format": export.FORMAT_NAME, "format_version": str(export.EXPORT_FORMAT + 1),
                        "layout": "dense", "metadata": "{}"})
    with pytest.raises(ValueError, match=f"format version {export.EXPORT_FORMAT + 1}.*up to {export.EXPORT_FORMAT}"):
        export.load(path)


def test_other_files_are_refused_clearly(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ValueError, match="not an occamgd export"):
        export.load(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        export.load(junk)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load(tmp_path / "missing.safetensors")


def test_an_inconsistent_sparse_file_is_refused(tmp_path):
    model, occam = _pruned()
    path = tmp_path / "m.safetensors"
    export.save_sparse(model, occam.masks, path)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    tensors["values/0.weight"] = tensors["values/0.weight"][:-1].clone()  # one value lost
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(ValueError, match=r"'0.weight' stores \d+ values for \d+ kept entries"):
        export.load(path)
    header["shapes"] = json.dumps({"0.weight": [32, 20]})  # 2.weight's record lost
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(ValueError, match="do not match the shapes recorded"):
        export.load(path)


def test_an_estimators_network_exports_and_reloads(tmp_path):
    from occamgd import OccamMLPClassifier
    from occamgd.models import TabularMLP

    x = torch.randn(120, 4)
    y = (x[:, 0] > 0).long().numpy()
    est = OccamMLPClassifier(hidden_layer_sizes=(16,), epochs=4, random_state=0).fit(x.numpy(), y)
    sizes = export.save(est.model_, est.masks_, tmp_path)
    net = TabularMLP(4, 2, hidden=(16,))
    export.load_into(net, tmp_path / sizes["sparse"]["file"])
    assert torch.equal(net(x), est.model_(x))

"""Class 6 of issue 16: nothing read from a file runs code or writes outside its directory.

examples/ddp_train.py resumes from plain tensors only (``weights_only=True``); a CIFAR-10 batch
(a pickle) may hold only dicts, lists, bytes, strings and numpy arrays, whose sizes must be backed
by the file's bytes; manifest names stay inside the manifest's directory (tests/test_data_tabular.py).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from occamgd.data import images
from occamgd.errors import InvalidValueError

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).parents[1] / "examples" / "ddp_train.py"


class _Touch:
    """A pickle that, when loaded by an unrestricted unpickler, creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def example(tmp_path, monkeypatch):
    """examples/ddp_train.py as a module, in a one-process gloo group."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(os.cpu_count() or 1))  # one thread
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield module
    finally:
        dist.destroy_process_group()


def test_the_example_never_unpickles_more_than_tensors():
    assert "weights_only=False" not in EXAMPLE.read_text()


def test_a_crafted_checkpoint_does_not_run_code_and_is_named(example, tmp_path):
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "ddp.pt"
    torch.save({"epoch": _Touch(marker)}, checkpoint)
    with pytest.raises(SystemExit) as info:
        example.main(["--epochs", "1", "--checkpoint", str(checkpoint)])
    assert not marker.exists()
    assert str(checkpoint) in str(info.value.code) and "tensors" in str(info.value.code)


def test_the_example_still_resumes_from_its_own_checkpoint(example, tmp_path, capsys):
    checkpoint = tmp_path / "ddp.pt"
    example.main(["--epochs", "1", "--checkpoint", str(checkpoint)])
    example.main(["--epochs", "2", "--checkpoint", str(checkpoint)])
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} after epoch 0" in out and "epoch   1" in out


# CIFAR-10 batches ----------------------------------------------------------------------------
def _batch(tmp_path, payload, name="data_batch_1") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


def test_a_cifar_batch_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = _batch(tmp_path, {b"data": _Touch(marker), b"labels": [0]})
    with pytest.raises(InvalidValueError, match="data_batch_1"):
        images._read_batch(path)
    assert not marker.exists()


class _BigArray:
    """Pickles as ``numpy.ndarray((n, 3072), uint8)``: an allocation no byte of the file backs."""

    def __init__(self, n: int):
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n, 3072), np.dtype(np.uint8)))


def test_a_cifar_batch_cannot_ask_for_memory_its_bytes_do_not_hold(tmp_path):
    n = 10**5  # 300 MB of images in a file of 200 kB (its labels)
    path = _batch(tmp_path, {b"data": _BigArray(n), b"labels": [0] * n})
    assert path.stat().st_size < 10**6
    with pytest.raises(InvalidValueError, match="data_batch_1"):
        images._read_batch(path)


def test_a_cifar_reconstruct_with_a_huge_shape_is_refused(tmp_path):
    from numpy.core.multiarray import _reconstruct  # noqa: F401  (the name the published batches use)

    class Huge:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (10**5, 3072), b"B"))

    path = _batch(tmp_path, {b"data": Huge(), b"labels": [0] * 10**5})
    with pytest.raises(InvalidValueError, match="data_batch_1"):
        images._read_batch(path)


def test_a_genuine_cifar_batch_still_loads(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = _batch(tmp_path, {b"batch_label": b"x", b"labels": [3, 7], b"data": data, b"filenames": [b"a", b"b"]})
    got, labels = images._read_batch(path)
    assert np.array_equal(got, data) and labels.tolist() == [3, 7]


def test_a_cifar_archive_member_too_large_for_a_batch_is_refused(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setattr(images, "CIFAR_MEMBER_BYTES", 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [*images.CIFAR_TRAIN, images.CIFAR_TEST]:
            member = tmp_path / name
            member.write_bytes(b"\0" * 2000)
            tar.add(member, arcname=f"{images.CIFAR_DIR}/{name}")
    with pytest.raises(InvalidValueError, match="claims 2,000 bytes"):
        images._extract_cifar(archive)


def test_a_gzip_bomb_is_not_inflated_past_what_an_idx_file_holds(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setattr(images, "IDX_MAX_BYTES", 10_000)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0" * 1_000_000))
    with pytest.raises(InvalidValueError, match="inflates to more than 10,000 bytes"):
        images.read_idx(path, images.IMAGES_MAGIC)

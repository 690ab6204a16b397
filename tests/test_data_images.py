"""Image loaders: idx and CIFAR formats read exactly, search order, errors, verified downloads.

Every file here is generated in tmp_path in the real formats; nothing touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from occamgd.data import ChecksumError, cache_dir, data_dirs, load_cifar10, load_fashion_mnist, load_mnist
from occamgd.data import images

IDX = images.IDX_FILES


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """No test sees the user's cache, $OCCAMGD_DATA or the system's Debian datasets."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCCAMGD_DATA", raising=False)
    monkeypatch.setattr(images, "DEBIAN_DIRS", {"fashion-mnist": [tmp_path / "debian"]})


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train=5, n_test=3, seed=0, gz=True) -> dict[str, np.ndarray]:
    """The four idx files of a tiny MNIST-like set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, 0] = 255  # the scaling must map 255 to exactly 1
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        raw = idx_bytes(array, images.IMAGES_MAGIC if key.endswith("images") else images.LABELS_MAGIC)
        if gz:
            (directory / f"{IDX[key]}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / IDX[key]).write_bytes(raw)
    return arrays


def test_mnist_idx_files_are_read_exactly(tmp_path):
    arrays = write_mnist(tmp_path / "m")
    (X, y), (Xt, yt) = load_mnist(root=tmp_path / "m")
    assert X.shape == (5, 1, 28, 28) and Xt.shape == (3, 1, 28, 28)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(X[:, 0], torch.tensor(arrays["train_images"], dtype=torch.float32) / 255)
    torch.testing.assert_close(Xt[:, 0], torch.tensor(arrays["test_images"], dtype=torch.float32) / 255)
    assert X[0, 0, 0, 0] == 1.0 and X.min() >= 0 and X.max() <= 1
    assert y.tolist() == arrays["train_labels"].tolist() and yt.tolist() == arrays["test_labels"].tolist()


def test_uncompressed_idx_files_are_accepted(tmp_path):
    arrays = write_mnist(tmp_path / "f", gz=False)
    (X, y), _ = load_fashion_mnist(root=tmp_path / "f")
    torch.testing.assert_close(X[:, 0], torch.tensor(arrays["train_images"], dtype=torch.float32) / 255)
    assert y.tolist() == arrays["train_labels"].tolist()


def test_search_order_is_root_then_occamgd_data_then_cache_then_debian(tmp_path, monkeypatch):
    # Each place holds a set with a different number of training images, to tell them apart.
    write_mnist(tmp_path / "root", n_train=2)
    write_mnist(tmp_path / "env" / "fashion-mnist", n_train=3)
    write_mnist(cache_dir("fashion-mnist"), n_train=4)
    write_mnist(tmp_path / "debian", n_train=6)
    monkeypatch.setenv("OCCAMGD_DATA", str(tmp_path / "env"))

    def n_train(**kw):
        return len(load_fashion_mnist(**kw)[0][0])

    assert n_train(root=tmp_path / "root") == 2
    assert n_train() == 3
    monkeypatch.delenv("OCCAMGD_DATA")
    assert n_train() == 4
    for f in cache_dir("fashion-mnist").iterdir():
        f.unlink()
    assert n_train() == 6
    # An explicit root is the only place looked at.
    with pytest.raises(FileNotFoundError):
        load_fashion_mnist(root=tmp_path / "empty")


def test_cache_dir_honours_xdg_cache_home_then_home(tmp_path, monkeypatch):
    assert cache_dir("mnist") == tmp_path / "cache" / "occamgd" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("mnist") == tmp_path / "home" / ".cache" / "occamgd" / "mnist"
    assert data_dirs("mnist") == [cache_dir("mnist")]
    assert data_dirs("mnist", root="/some/where") == [Path("/some/where")]


def test_not_found_names_every_place_and_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCAMGD_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist()
    message = str(info.value)
    for place in (tmp_path / "env" / "fashion-mnist", cache_dir("fashion-mnist"), tmp_path / "debian"):
        assert str(place) in message
    assert "download=True" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert images.MIRRORS["fashion-mnist"][0] in message
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz") as info:
        load_cifar10()
    assert "apt-get" not in str(info.value) and "https://www.cs.toronto.edu/~kriz/" in str(info.value)


def test_a_directory_missing_one_of_the_four_files_is_not_used(tmp_path):
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(root=tmp_path / "m")


def _truncate_images(d):
    path = d / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _swap_magic(d):
    path = d / "train-labels-idx1-ubyte"
    path.write_bytes(images.IMAGES_MAGIC.to_bytes(4, "big") + path.read_bytes()[4:])
    return path


def _trailing_bytes(d):
    path = d / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    return path


def _header_only(d):
    path = d / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    return path


def _count_mismatch(d):
    path = d / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), images.LABELS_MAGIC))
    return path


@pytest.mark.parametrize("damage, says", [
    (_truncate_images, "truncated"),
    (_swap_magic, "magic number 2051, expected 2049"),
    (_trailing_bytes, "trailing bytes"),
    (_header_only, "truncated idx header"),
    (_count_mismatch, "5 images but .* 4 labels"),
])
def test_damaged_idx_files_raise_naming_the_file(tmp_path, damage, says):
    write_mnist(tmp_path, gz=False)
    path = damage(tmp_path)
    with pytest.raises(ValueError, match=says) as info:
        load_mnist(root=tmp_path)
    assert str(path) in str(info.value)


def test_a_cut_gzip_raises_naming_the_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="gzip") as info:
        load_mnist(root=tmp_path)
    assert str(path) in str(info.value)


# CIFAR-10 -------------------------------------------------------------------------------------
def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    """A batch as published: a protocol-2 pickle whose arrays name numpy.core (numpy 1)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    blob = pickle.dumps({b"batch_label": b"batch", b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, protocol=2)
    return blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"), data, labels


def write_cifar(directory: Path, n=2, n_test=3) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    directory.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for i, name in enumerate(images.CIFAR_TRAIN):
        blob, data, labels = cifar_batch(n, seed=i)
        (directory / name).write_bytes(blob)
        train_data.append(data)
        train_labels += labels
    blob, test_data, test_labels = cifar_batch(n_test, seed=99)
    (directory / images.CIFAR_TEST).write_bytes(blob)
    return np.concatenate(train_data), train_labels, test_data, test_labels


def write_cifar_archive(path: Path, batches: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches, arcname=images.CIFAR_DIR)
    return path


def test_cifar_batches_are_read_exactly_in_channel_row_column_order(tmp_path):
    data, labels, test_data, test_labels = write_cifar(tmp_path / images.CIFAR_DIR)
    (X, y), (Xt, yt) = load_cifar10(root=tmp_path)
    assert X.shape == (10, 3, 32, 32) and Xt.shape == (3, 3, 32, 32)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    # Pixel (c, row, col) of image i is byte c * 1024 + row * 32 + col of its row.
    assert X[7, 2, 5, 9] == data[7, 2 * 1024 + 5 * 32 + 9] / np.float32(255)
    torch.testing.assert_close(X.reshape(10, -1), torch.tensor(data, dtype=torch.float32) / 255)
    torch.testing.assert_close(Xt.reshape(3, -1), torch.tensor(test_data, dtype=torch.float32) / 255)
    assert y.tolist() == labels and yt.tolist() == test_labels


def test_cifar_archive_is_extracted_to_the_cache_once_per_archive(tmp_path, monkeypatch):
    data, *_ = write_cifar(tmp_path / "src" / images.CIFAR_DIR)
    archive = write_cifar_archive(tmp_path / "root" / images.CIFAR_ARCHIVE, tmp_path / "src" / images.CIFAR_DIR)
    (X, _), _ = load_cifar10(root=tmp_path / "root")
    torch.testing.assert_close(X.reshape(10, -1), torch.tensor(data, dtype=torch.float32) / 255)
    assert (cache_dir("cifar-10") / images.CIFAR_DIR / "test_batch").is_file()

    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    load_cifar10(root=tmp_path / "root")
    assert opened == []  # the extracted copy is reused

    data2, *_ = write_cifar(tmp_path / "src2" / images.CIFAR_DIR, n=1)
    write_cifar_archive(archive, tmp_path / "src2" / images.CIFAR_DIR)
    os.utime(archive, ns=(1, 1))  # a new archive (other size and time) is extracted again
    (X2, _), _ = load_cifar10(root=tmp_path / "root")
    assert [mode for _, mode in opened] == ["w:gz", "r:gz"] and X2.shape[0] == 5


def test_cifar_pickle_naming_anything_but_numpy_is_refused(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3.*only numpy arrays"):
        load_cifar10(root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_batch_of_wrong_shape_raises_naming_the_file(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="test_batch.*expected uint8 of shape \\(n, 3072\\)"):
        load_cifar10(root=tmp_path)


# Downloads (file:// URLs stand in for the servers) -------------------------------------------
def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mnist_server(tmp_path, monkeypatch):
    """A local 'mirror' holding tiny MNIST files, with their MD5s as the published ones."""
    arrays = write_mnist(tmp_path / "server")
    monkeypatch.setitem(images.MIRRORS, "mnist", [(tmp_path / "server").as_uri() + "/"])
    monkeypatch.setitem(images.MD5, "mnist", {p.name: md5(p) for p in (tmp_path / "server").iterdir()})
    return arrays


def test_download_fetches_verifies_and_caches(mnist_server):
    (X, y), _ = load_mnist(download=True)
    assert y.tolist() == mnist_server["train_labels"].tolist()
    cached = sorted(p.name for p in cache_dir("mnist").iterdir())
    assert cached == sorted(f"{stem}.gz" for stem in IDX.values())  # no temporary files left
    images.MIRRORS["mnist"] = ["file:///nonexistent/"]
    assert load_mnist()[0][1].tolist() == y.tolist()  # served from the cache now


def test_download_with_a_bad_checksum_raises_and_leaves_nothing(mnist_server, tmp_path):
    actual = md5(tmp_path / "server" / "t10k-images-idx3-ubyte.gz")
    images.MD5["mnist"]["t10k-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(ChecksumError) as info:
        load_mnist(download=True)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "0" * 32 in message and actual in message
    left = [p.name for p in cache_dir("mnist").iterdir()]
    assert "t10k-images-idx3-ubyte.gz" not in left
    assert not [name for name in left if name.endswith(".tmp")]


def test_download_tries_the_next_mirror_and_names_every_failure(mnist_server, tmp_path):
    good = images.MIRRORS["mnist"][0]
    images.MIRRORS["mnist"] = [(tmp_path / "gone").as_uri() + "/", good]
    load_mnist(download=True)
    images.MIRRORS["mnist"] = [(tmp_path / "gone").as_uri() + "/"]
    with pytest.raises(OSError, match="could not download") as info:
        load_mnist(root=tmp_path / "elsewhere", download=True)
    assert (tmp_path / "gone").as_uri() in str(info.value)


def test_download_goes_into_an_explicit_root(mnist_server, tmp_path):
    load_mnist(root=tmp_path / "mine", download=True)
    assert (tmp_path / "mine" / "train-images-idx3-ubyte.gz").is_file()
    assert not cache_dir("mnist").exists()


def test_cifar_download_verifies_the_archive_then_extracts_it(tmp_path, monkeypatch):
    data, *_ = write_cifar(tmp_path / "src" / images.CIFAR_DIR)
    archive = write_cifar_archive(tmp_path / "server" / images.CIFAR_ARCHIVE, tmp_path / "src" / images.CIFAR_DIR)
    monkeypatch.setitem(images.MIRRORS, "cifar-10", [(tmp_path / "server").as_uri() + "/"])
    monkeypatch.setitem(images.MD5, "cifar-10", {images.CIFAR_ARCHIVE: "f" * 32})
    with pytest.raises(ChecksumError, match=md5(archive)):
        load_cifar10(download=True)
    assert not (cache_dir("cifar-10") / images.CIFAR_ARCHIVE).exists()
    images.MD5["cifar-10"][images.CIFAR_ARCHIVE] = md5(archive)
    (X, _), _ = load_cifar10(download=True)
    torch.testing.assert_close(X.reshape(10, -1), torch.tensor(data, dtype=torch.float32) / 255)


def test_fetch_streams_a_url_into_a_file(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 3000)
    out = io.BytesIO()
    images.fetch((tmp_path / "a").as_uri(), out)
    assert out.getvalue() == b"x" * 3000


# The real thing, where Debian's dataset-fashion-mnist is installed ---------------------------
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_loads_with_the_published_shape_balance_and_statistics():
    # Debian re-compressed the files, so the .gz checksums differ from the published ones; the
    # content is checked instead: sizes, the balanced classes and the well-known pixel mean/std.
    (X, y), (Xt, yt) = load_fashion_mnist(root=DEBIAN)
    assert X.shape == (60000, 1, 28, 28) and Xt.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10 and torch.bincount(yt).tolist() == [1000] * 10
    assert float(X.mean()) == pytest.approx(0.2860, abs=1e-4)
    assert float(X.std()) == pytest.approx(0.3530, abs=1e-4)

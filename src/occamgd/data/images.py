"""MNIST, Fashion-MNIST and CIFAR-10 from their original files, as float tensors in [0, 1].

Every loader returns ``((X_train, y_train), (X_test, y_test))``: ``X`` float32 of shape
``(n, channels, height, width)`` scaled to [0, 1], ``y`` int64 — ready for ``occamgd.fit``.

Files are looked for in :func:`data_dirs` (an explicit ``root`` only; else ``$OCCAMGD_DATA/<name>``,
the cache ``~/.cache/occamgd/<name>`` and, for Fashion-MNIST, Debian's
``/usr/share/datasets/fashion-mnist``). ``download=True`` fetches what is missing from the
canonical sources into ``root`` (or the cache), checks the published MD5 and writes atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Union

import numpy as np
import torch

from ..errors import InvalidValueError, MissingFileError
from ..io import atomic_write

PathLike = Union[str, os.PathLike]
Split = tuple[torch.Tensor, torch.Tensor]


class ChecksumError(InvalidValueError):
    """A downloaded file's MD5 differs from the published one (the file was discarded)."""

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx: 0x08 (unsigned byte) then 3 or 1 dimensions

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"

# Mirrors are tried in order; a file is accepted only if its MD5 matches the published one.
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar-10": ["https://www.cs.toronto.edu/~kriz/"],
}
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar-10": {CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
}
DEBIAN_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


# Where to look ------------------------------------------------------------------------------
def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/occamgd/<name>`` (``~/.cache/occamgd/<name>`` when it is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "occamgd" / name


def data_dirs(name: str, root: PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order (read from the environment now)."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs = []
    if os.environ.get("OCCAMGD_DATA"):
        dirs.append(Path(os.environ["OCCAMGD_DATA"]).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.extend(DEBIAN_DIRS.get(name, []))
    return dirs


def _not_found(name: str, dirs: list[Path], wanted: str) -> FileNotFoundError:
    places = "\n".join(f"  - {d}" for d in dirs)
    how = [f"pass download=True to fetch it into {cache_dir(name)} (or into root, when given)"]
    if name in APT_PACKAGES:
        how.append(f"on Debian/Ubuntu: apt-get install {APT_PACKAGES[name]}")
    how.append(f"fetch {', '.join(MD5[name])} by hand from {MIRRORS[name][0]} into one of the places above")
    how.append(f"or set OCCAMGD_DATA=DIR with the files in DIR/{name}/")
    return MissingFileError(
        f"{name}: no directory holds {wanted}. Looked in:\n{places}\nTo get the data:\n"
        + "\n".join(f"  - {h}" for h in how)
    )


# Download -----------------------------------------------------------------------------------
def fetch(url: str, out: IO[bytes]) -> None:
    """Copy the body at ``url`` into ``out`` (urllib, so ``file://`` URLs work too)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out, length=1 << 20)


class _HashingWriter:
    """Passes writes through to a file while computing their digest by ``algorithm`` (a
    :mod:`hashlib` name, such as ``"md5"`` or ``"sha256"``)."""

    def __init__(self, f: IO[bytes], algorithm: str):
        self.f, self.algorithm, self.hash = f, algorithm, hashlib.new(algorithm)

    def write(self, chunk: bytes) -> int:
        self.hash.update(chunk)
        return self.f.write(chunk)

    def check(self, expected: str, source: str) -> None:
        """Raise :class:`ChecksumError` naming ``source`` unless the digest so far is ``expected``.

        Called inside :func:`~occamgd.io.atomic_write`, so the temporary file is deleted.
        """
        actual = self.hash.hexdigest()
        if actual != expected:
            raise ChecksumError(f"{source}: {self.algorithm.upper()} {actual} does not match the published "
                                f"{expected}; the download was discarded")


def _download(name: str, filename: str, dest: Path) -> Path:
    """Fetch ``filename`` of ``name`` into ``dest``, trying each mirror; verify its MD5.

    The file appears at ``dest/filename`` only once complete and verified: a failed download
    or a checksum mismatch leaves nothing behind.
    """
    expected = MD5[name][filename]
    errors = []
    for mirror in MIRRORS[name]:
        url = mirror + filename

        def write(f: IO[bytes]) -> None:
            out = _HashingWriter(f, "md5")
            fetch(url, out)
            out.check(expected, f"{filename} from {url}")

        try:
            return atomic_write(dest / filename, write)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
            errors.append(f"{url}: {e}")
    raise OSError(f"{name}: could not download {filename}:\n" + "\n".join(f"  - {e}" for e in errors))


# idx (MNIST, Fashion-MNIST) -------------------------------------------------------------------
def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


#: The most bytes a gzipped idx file may inflate to (MNIST's training images are 47 MB).
IDX_MAX_BYTES = 256 * 2**20


def read_idx(path: PathLike, magic: int) -> np.ndarray:
    """Read an idx file (gzipped or not) of unsigned bytes; check its magic number and length."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by name
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(IDX_MAX_BYTES + 1)  # never inflate more than any idx file holds
            if len(raw) > IDX_MAX_BYTES:
                raise InvalidValueError(f"{path}: inflates to more than {IDX_MAX_BYTES:,} bytes, more than any "
                                        "MNIST-style idx file holds")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip is EOFError
        raise InvalidValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 4:
        raise InvalidValueError(f"{path}: {len(raw)} bytes, too short for an idx header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise InvalidValueError(f"{path}: idx magic number {found}, expected {magic} "
                         f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InvalidValueError(f"{path}: truncated idx header ({len(raw)} bytes, expected {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise InvalidValueError(f"{path}: {what}: {len(raw)} bytes, expected {expected} for dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_pair(images: Path, labels: Path, size: tuple[int, int]) -> Split:
    X = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if X.ndim != 3 or X.shape[1:] != size:
        raise InvalidValueError(f"{images}: images of shape {X.shape[1:]}, expected {size}")
    if len(X) != len(y):
        raise InvalidValueError(f"{images} holds {len(X)} images but {labels} holds {len(y)} labels")
    if y.size and y.max() > 9:
        raise InvalidValueError(f"{labels}: label {int(y.max())} out of range; accepted: 0..9")
    x = torch.from_numpy(X.astype(np.float32)).div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(y.astype(np.int64))


def _load_idx(name: str, root: PathLike | None, download: bool) -> tuple[Split, Split]:
    dirs = data_dirs(name, root)
    for d in dirs:
        files = {key: _find(d, stem) for key, stem in IDX_FILES.items()}
        if all(files.values()):
            break
    else:
        if not download:
            raise _not_found(name, dirs, "all four idx files (" + ", ".join(IDX_FILES.values()) + "[.gz])")
        d = dirs[0] if root is not None else cache_dir(name)
        files = {key: _find(d, stem) or _download(name, f"{stem}.gz", d) for key, stem in IDX_FILES.items()}
    train = _idx_pair(files["train_images"], files["train_labels"], (28, 28))
    test = _idx_pair(files["test_images"], files["test_labels"], (28, 28))
    return train, test


def load_mnist(root: PathLike | None = None, download: bool = False) -> tuple[Split, Split]:
    """MNIST: ``((X_train, y_train), (X_test, y_test))``, X float32 (n, 1, 28, 28) in [0, 1]."""
    return _load_idx("mnist", root, download)


def load_fashion_mnist(root: PathLike | None = None, download: bool = False) -> tuple[Split, Split]:
    """Fashion-MNIST: ``((X_train, y_train), (X_test, y_test))``, X float32 (n, 1, 28, 28) in [0, 1]."""
    return _load_idx("fashion-mnist", root, download)


# CIFAR-10 -------------------------------------------------------------------------------------
class _NdarrayName:
    """What a batch gets for the name ``numpy.ndarray``: a token only :func:`_reconstruct` accepts.

    Calling ``numpy.ndarray(shape, dtype)`` from a pickle would allocate any size the file names;
    the published batches only pass the class to ``_reconstruct``."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("CIFAR batch calls numpy.ndarray directly; only the array pickles numpy "
                                     "writes are allowed")


_NDARRAY = _NdarrayName()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for plain arrays of no elements (their bytes come after, from the
    file): a pickle naming a larger shape would allocate what the file does not hold."""
    if subtype is not _NDARRAY or not (isinstance(shape, tuple) and 0 in shape):
        raise pickle.UnpicklingError(f"CIFAR batch reconstructs {getattr(subtype, '__name__', subtype)!r} of shape "
                                     f"{shape!r}; only numpy's own array pickles (an empty array, then its bytes) "
                                     "are allowed")
    return np.empty(shape, dtype=dtype)  # what numpy's _reconstruct(ndarray, shape, dtype) makes


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: a pickle can run any code, so allow just what they hold (dicts,
    lists, bytes, strings, numbers, and numpy arrays built the way numpy pickles them)."""

    # The published batches name numpy.core, which numpy 2 renamed to numpy._core;
    # _codecs.encode is how protocol 2 stores bytes under Python 3; _frombuffer is how protocol 5
    # stores arrays. Names are resolved at load time, so no private numpy name is imported here.
    ALLOWED = {
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
    RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) in self.RECONSTRUCT:
            return _reconstruct
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}; only numpy arrays are allowed")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module[len("numpy.core."):]  # skip numpy 2's deprecation shim
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError,
            MemoryError, RecursionError) as e:
        raise InvalidValueError(f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' and "
                         f"b'labels'): {type(e).__name__}: {e}") from e
    if not isinstance(data, np.ndarray) or not isinstance(labels, (list, np.ndarray)):
        raise InvalidValueError(f"{path}: data of type {type(data).__name__} and labels of type "
                                f"{type(labels).__name__}; expected a uint8 numpy array and a list of labels")
    if data.nbytes > path.stat().st_size:
        raise InvalidValueError(f"{path}: its data claims {data.nbytes:,} bytes but the file holds "
                                f"{path.stat().st_size:,}; not a CIFAR-10 python batch")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidValueError(f"{path}: labels are not integers: {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InvalidValueError(f"{path}: data of dtype {data.dtype} and shape {data.shape}, "
                         "expected uint8 of shape (n, 3072)")
    if labels.shape != (len(data),):
        raise InvalidValueError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise InvalidValueError(f"{path}: labels outside 0..9")
    return data, labels


def _cifar_split(paths: list[Path]) -> Split:
    batches = [_read_batch(p) for p in paths]
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return x, torch.from_numpy(labels)


def _batches_in(directory: Path) -> Path | None:
    """The directory holding all six batches: ``directory/cifar-10-batches-py`` or ``directory``."""
    for d in (directory / CIFAR_DIR, directory):
        if all((d / b).is_file() for b in [*CIFAR_TRAIN, CIFAR_TEST]):
            return d
    return None


#: The largest member a CIFAR-10 archive may have (each batch is 10000 x 3073 bytes plus its pickle).
CIFAR_MEMBER_BYTES = 40 * 2**20


def _extract_cifar(archive: Path) -> Path:
    """Extract the six batches of ``archive`` into the cache, once per archive version.

    Only the named members are read (no path in the archive decides where anything is
    written), and the extracted directory replaces the old one in a single rename.
    """
    target = cache_dir("cifar-10") / CIFAR_DIR
    stat = archive.stat()
    stamp = f"{archive.resolve()} {stat.st_size} {stat.st_mtime_ns}\n"
    marker = target / ".extracted-from"
    if _batches_in(target) == target and marker.is_file() and marker.read_text() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in [*CIFAR_TRAIN, CIFAR_TEST]:
                    info = tar.getmember(f"{CIFAR_DIR}/{member}")
                    if info.size > CIFAR_MEMBER_BYTES:  # a batch is 31 MB: refuse to inflate a bomb
                        raise InvalidValueError(f"{archive}: member {info.name} claims {info.size:,} bytes, more "
                                                f"than a CIFAR-10 batch ({CIFAR_MEMBER_BYTES:,} at most)")
                    f = tar.extractfile(info)
                    if f is None:
                        raise KeyError(member)
                    (tmp / member).write_bytes(f.read())
        except (tarfile.TarError, KeyError, OSError, EOFError) as e:
            raise InvalidValueError(f"{archive}: not a complete CIFAR-10 python archive (expected "
                             f"{CIFAR_DIR}/{{{', '.join([*CIFAR_TRAIN, CIFAR_TEST])}}}): {e}") from e
        (tmp / marker.name).write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def load_cifar10(root: PathLike | None = None, download: bool = False) -> tuple[Split, Split]:
    """CIFAR-10: ``((X_train, y_train), (X_test, y_test))``, X float32 (n, 3, 32, 32) in [0, 1].

    Reads the "python version" batches from ``cifar-10-batches-py/`` (or the batch files
    directly in a searched directory), else extracts ``cifar-10-python.tar.gz`` into the cache.
    """
    dirs = data_dirs("cifar-10", root)
    for d in dirs:
        batches = _batches_in(d)
        if batches is None and (d / CIFAR_ARCHIVE).is_file():
            batches = _extract_cifar(d / CIFAR_ARCHIVE)
        if batches is not None:
            break
    else:
        if not download:
            raise _not_found("cifar-10", dirs, f"{CIFAR_DIR}/ or {CIFAR_ARCHIVE}")
        d = dirs[0] if root is not None else cache_dir("cifar-10")
        batches = _extract_cifar(_download("cifar-10", CIFAR_ARCHIVE, d))
    return _cifar_split([batches / b for b in CIFAR_TRAIN]), _cifar_split([batches / CIFAR_TEST])

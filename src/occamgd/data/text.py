"""Character-level text corpora: a train/validation split of character ids and a batch sampler.

>>> corpus = load_text("tinyshakespeare.txt", block_size=256)     # checks both splits fit a window
>>> x, y = get_batch(corpus.train, 256, 64, torch.Generator().manual_seed(0), "cpu")
>>> corpus.decode(x[0])

The package ships Karpathy's Tiny Shakespeare (char-rnn's ``input.txt``, 1 115 394 characters,
:data:`BUNDLED_TINYSHAKESPEARE`); :func:`find_tinyshakespeare` looks for it where the image loaders
look for theirs, then falls back to that copy. :func:`download_tinyshakespeare` fetches it from
its source and checks its SHA-256.
"""

from __future__ import annotations

import http.client
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

import torch

from ..errors import InvalidTypeError, InvalidValueError, MissingFileError
from ..io import atomic_write, sha256_file
from .images import ChecksumError, _HashingWriter, cache_dir, data_dirs, fetch

PathLike = Union[str, os.PathLike]

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: File names accepted for Tiny Shakespeare in a searched directory (downloads use the first).
TINYSHAKESPEARE_FILES = ("tinyshakespeare.txt", "input.txt")


@dataclass(frozen=True)
class CharCorpus:
    """A text as character ids: ``train`` is the first part, ``val`` the rest (by position).

    ``chars`` is the vocabulary: every distinct character of the whole text, sorted; a
    character's id is its index in ``chars``.
    """

    chars: str
    train: torch.Tensor
    val: torch.Tensor
    val_fraction: float = 0.1
    path: Path | None = None

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Character ids of ``text`` (int64); a character outside the vocabulary is refused."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise InvalidValueError(f"characters {unknown[:10]} are not in this corpus's vocabulary; accepted: "
                             f"characters of {self.chars!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """The text of a sequence of ids (a 1-D tensor or list of ints)."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise InvalidValueError(f"ids {bad[:10]} are outside this vocabulary; accepted: 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)

    def check_context(self, block_size: int) -> None:
        """Raise ``ValueError`` unless each split holds at least one window of ``block_size``."""
        for name, ids in (("training", self.train), ("validation", self.val)):
            if len(ids) < block_size + 1:
                raise InvalidValueError(
                    f"{self.path or 'corpus'}: the {name} split has {len(ids)} characters, fewer than the "
                    f"{block_size + 1} one window of block_size={block_size} needs (inputs plus the next "
                    f"character); accepted: a corpus of at least "
                    f"{_min_length(block_size, self.val_fraction)} characters at "
                    f"val_fraction={self.val_fraction}, or a smaller block_size"
                )


def _split_point(n: int, val_fraction: float) -> int:
    # nanoGPT's split (first 90 % for training), so validation losses compare with its runs.
    return int(n * (1.0 - val_fraction))


def _min_length(block_size: int, val_fraction: float) -> int:
    """The shortest text whose two splits each hold ``block_size + 1`` characters."""
    need = block_size + 1
    # Both split sizes grow by at most one per added character and the smaller one is at most
    # n * min(f, 1 - f) + 1: start below that bound and walk up to the first length that fits.
    n = max(2 * need, math.floor((need - 1) / min(val_fraction, 1.0 - val_fraction)) - 2)
    while True:
        cut = _split_point(n, val_fraction)
        if cut >= need and n - cut >= need:
            return n
        n += 1


def load_text(path: PathLike, *, val_fraction: float = 0.1, encoding: str = "utf-8",
              block_size: int | None = None, max_chars: int | None = None) -> CharCorpus:
    """Read a text file as a :class:`CharCorpus`: the first ``1 - val_fraction`` of its
    characters for training, the rest for validation. ``max_chars`` keeps only the first that
    many characters of the file (split and vocabulary then come from those alone).

    Refused with ``ValueError`` before anything else happens: an empty file, bytes that are not
    valid ``encoding`` (the message gives the byte offset), and, when ``block_size`` is given, a
    split too short for one window of that many characters (the message says how many are needed).
    """
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise InvalidValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    for name, value in (("block_size", block_size), ("max_chars", max_chars)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise InvalidValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    path = Path(path).expanduser()
    raw = path.read_bytes()
    if not raw:
        raise InvalidValueError(f"{path}: the file is empty; accepted: a text file with at least one character")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise InvalidValueError(f"{path}: not valid {encoding} at byte offset {e.start} ({e.reason}: "
                         f"{raw[e.start:e.end]!r}); pass the file's encoding= or fix the file") from e
    text = text[:max_chars]
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = _split_point(len(ids), val_fraction)
    corpus = CharCorpus(chars=chars, train=ids[:cut], val=ids[cut:], val_fraction=float(val_fraction), path=path)
    if block_size is not None:
        corpus.check_context(block_size)
    return corpus


def get_batch(ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``ids``: inputs ``x`` and next characters ``y``, both
    ``(batch_size, block_size)`` int64 on ``device``.

    Window starts are drawn with ``generator`` (a CPU generator), so the same seed gives the same
    batches on every device.
    """
    if not (torch.is_tensor(ids) and ids.dim() == 1 and not ids.is_floating_point() and not ids.is_complex()):
        raise InvalidTypeError(f"ids must be a 1-D integer tensor, got {type(ids).__name__} "
                        f"{getattr(ids, 'dtype', '')} {tuple(getattr(ids, 'shape', ()))}")
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise InvalidValueError(f"{name} must be an integer >= 1, got {value!r}")
    if len(ids) < block_size + 1:
        raise InvalidValueError(f"ids holds {len(ids)} characters; a window of block_size={block_size} needs "
                         f"at least {block_size + 1}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    windows = ids[(starts[:, None] + torch.arange(block_size + 1)).to(ids.device)].long()
    device = torch.device(device)
    if device.type == "cuda" and windows.device.type == "cpu":
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


# Tiny Shakespeare -----------------------------------------------------------------------------
#: The copy shipped with the package (source: TINYSHAKESPEARE_URL; SHA-256 TINYSHAKESPEARE_SHA256).
BUNDLED_TINYSHAKESPEARE = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare.txt"

def download_tinyshakespeare(root: PathLike | None = None, *, url: str = TINYSHAKESPEARE_URL) -> Path:
    """Fetch Tiny Shakespeare into ``root`` (default: the cache ``~/.cache/occamgd/tinyshakespeare``).

    Returns the path of ``tinyshakespeare.txt`` there. A file already present with the published
    SHA-256 is not fetched again; one with another checksum is left alone and reported
    (``ChecksumError``). The download appears only once complete and verified.
    """
    directory = Path(root).expanduser() if root is not None else cache_dir("tinyshakespeare")
    path = directory / TINYSHAKESPEARE_FILES[0]
    if path.is_file():
        actual = sha256_file(path)
        if actual != TINYSHAKESPEARE_SHA256:
            raise ChecksumError(f"{path} exists with SHA-256 {actual}, not Tiny Shakespeare's "
                                f"{TINYSHAKESPEARE_SHA256}; move it away to download the corpus there")
        return path

    def write(f: IO[bytes]) -> None:
        out = _HashingWriter(f, "sha256")
        fetch(url, out)
        out.check(TINYSHAKESPEARE_SHA256, f"Tiny Shakespeare from {url}")

    try:
        return atomic_write(path, write)
    except (OSError, http.client.HTTPException) as e:  # urllib's URLError is an OSError
        raise OSError(f"could not download Tiny Shakespeare from {url}: {e}") from e


def find_tinyshakespeare(root: PathLike | None = None, download: bool = False) -> Path:
    """Path of Tiny Shakespeare: in ``root`` when given, else ``$OCCAMGD_DATA/tinyshakespeare``,
    the cache, or the copy bundled with the package; fetched into ``root`` when absent there and
    ``download`` is true."""
    dirs = data_dirs("tinyshakespeare", root)
    for d in dirs:
        for name in TINYSHAKESPEARE_FILES:
            if (d / name).is_file():
                return d / name
    if root is None and BUNDLED_TINYSHAKESPEARE.is_file():
        return BUNDLED_TINYSHAKESPEARE
    if download:
        return download_tinyshakespeare(root)
    places = "\n".join(f"  - {d}" for d in dirs)
    raise MissingFileError(
        f"tinyshakespeare: no directory holds {' or '.join(TINYSHAKESPEARE_FILES)}. Looked in:\n{places}\n"
        f"To get it: occamgd.data.download_tinyshakespeare() (or download=True) fetches {TINYSHAKESPEARE_URL} "
        "into the cache; or pass the path of any text file"
    )

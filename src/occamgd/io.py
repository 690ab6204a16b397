"""Atomic file writes: a temporary file beside the target, then one rename."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file, fsync it, then rename it to ``path``.

    A reader never sees a half-written file, and an error (or Ctrl-C) leaves any earlier file
    at ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A long name is cut in the temporary one, which must fit the file system's name limit too.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# Where a command may write ---------------------------------------------------------------------
def _inside(path: Path, directory: Path) -> bool:
    """Whether resolved ``path`` is ``directory`` or lies under it (both resolved)."""
    return path == directory or directory in path.parents


def file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a directory (so ``path`` cannot be created), if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


#: The longest file name (in bytes) most file systems allow; longer ones are refused up front.
NAME_MAX = 255


def check_name_lengths(path: Path, what: str) -> None:
    """Refuse a path with a component longer than :data:`NAME_MAX` bytes (before any system call
    that would fail on it with a bare OSError)."""
    from .errors import InvalidValueError

    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise InvalidValueError(f"{what} path has the name {part[:40]!r}... of {len(os.fsencode(part))} bytes; "
                                    f"accepted: names of at most {NAME_MAX} bytes")


def check_output_file(path: str | os.PathLike, *, what: str = "output file", reads: tuple = (),
                      protected: tuple = (), own: tuple = (), force: bool = False) -> Path:
    """Refuse an output file that would lose something: an input the command reads (``reads``,
    compared after resolving symlinks), a path inside a directory it reads (``protected``; the
    files in ``own`` are that directory's own and may be rewritten), a directory, a path under a
    file, or an existing file unless ``force``. Returns ``path``; nothing is written here.
    """
    from .errors import InvalidValueError

    if os.fspath(path) == "":
        raise InvalidValueError(f"the {what} path is empty; accepted: a file path")
    path = Path(path)
    check_name_lengths(path, what)
    try:
        _check_output_file(path, what, reads, protected, own, force)
    except OSError as e:
        raise InvalidValueError(f"{what} {path} cannot be used: {e.strerror or e}") from None
    return path


def _check_output_file(path: Path, what: str, reads: tuple, protected: tuple, own: tuple, force: bool) -> None:
    from .errors import InvalidValueError

    resolved = path.resolve()
    for source in reads:
        if resolved == Path(source).resolve():
            raise InvalidValueError(f"{what} {path} is {source}, which this command reads; accepted: another path")
    own_files = {Path(p).resolve() for p in own}
    for directory in protected:
        if _inside(resolved, Path(directory).resolve()) and resolved not in own_files:
            raise InvalidValueError(f"{what} {path} is inside the model directory {directory}, which this command "
                                    "reads; accepted: a path outside it")
    if path.is_dir():
        raise InvalidValueError(f"{what} {path} is a directory; accepted: a file path")
    blocker = file_ancestor(path.absolute())
    if blocker is not None:
        raise InvalidValueError(f"{what} {path} cannot be created: {blocker} is a file, not a directory")
    if (path.exists() or path.is_symlink()) and not force and resolved not in own_files:
        raise InvalidValueError(f"{what} {path} exists; accepted: another path, or --force to replace it")
    check_writable(path, what)


def check_writable(path: Path, what: str) -> None:
    """Refuse ``path`` if no file can be created there: its name is too long, or the nearest existing
    directory above it cannot be written (a probe file is made there and removed at once)."""
    from .errors import InvalidValueError

    path = path.absolute()
    existing = next(p for p in path.parents if p.exists())
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".occamgd-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InvalidValueError(f"{what} {path} cannot be written: {e.strerror or e} in {existing}; accepted: a "
                                "path in a directory you can write") from None

"""data.text: character corpora (split, vocabulary, errors before training), batches, Tiny Shakespeare."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from occamgd.data import ChecksumError, download_tinyshakespeare, find_tinyshakespeare, get_batch, load_text
from occamgd.data import text as text_module

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_split_is_90_10_by_position_with_a_sorted_vocabulary(corpus_file):
    corpus = load_text(corpus_file)
    assert corpus.chars == "".join(sorted(set(TEXT)))
    assert len(corpus.train) == int(len(TEXT) * 0.9)
    assert corpus.decode(corpus.train) + corpus.decode(corpus.val) == TEXT
    assert corpus.train.dtype == torch.long and corpus.vocab_size == len(set(TEXT))


def test_encode_decode_round_trip_and_refusals(corpus_file):
    corpus = load_text(corpus_file, val_fraction=0.25)
    assert len(corpus.val) == len(TEXT) - int(len(TEXT) * 0.75)
    assert corpus.decode(corpus.encode("hear me")) == "hear me"
    with pytest.raises(ValueError, match="'Z'"):
        corpus.encode("Zeal")
    with pytest.raises(ValueError, match=str(corpus.vocab_size)):
        corpus.decode([corpus.vocab_size])


def test_max_chars_keeps_the_beginning_only(corpus_file):
    corpus = load_text(corpus_file, max_chars=20)
    assert corpus.decode(corpus.train) + corpus.decode(corpus.val) == TEXT[:20]
    assert corpus.chars == "".join(sorted(set(TEXT[:20])))
    with pytest.raises(ValueError, match="max_chars"):
        load_text(corpus_file, max_chars=0)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_text(tmp_path / "empty.txt")


def test_non_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="byte offset 3"):
        load_text(path)
    assert "\u00e9" in load_text(path, encoding="latin-1").chars


@pytest.mark.parametrize("fraction", [0.0, 1.0, "0.1"])
def test_bad_val_fraction(corpus_file, fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_text(corpus_file, val_fraction=fraction)


@pytest.mark.parametrize(("block_size", "fraction"), [(8, 0.1), (16, 0.25), (5, 0.5)])
def test_too_short_for_one_window_says_how_many_characters(tmp_path, block_size, fraction):
    # Find the stated minimum, then check it is exact: that many characters load, one fewer fail.
    path = tmp_path / "short.txt"
    path.write_text("ab" * 3)
    with pytest.raises(ValueError, match=rf"at least (\d+) characters") as info:
        load_text(path, block_size=block_size, val_fraction=fraction)
    assert f"{block_size + 1}" in str(info.value)
    need = int(str(info.value).split("at least ")[1].split()[0])
    path.write_text("x" * need)
    corpus = load_text(path, block_size=block_size, val_fraction=fraction)
    assert min(len(corpus.train), len(corpus.val)) >= block_size + 1
    path.write_text("x" * (need - 1))
    with pytest.raises(ValueError, match="split has"):
        load_text(path, block_size=block_size, val_fraction=fraction)


def test_get_batch_windows_and_next_characters():
    ids = torch.arange(100)
    x, y = get_batch(ids, 7, 5, torch.Generator().manual_seed(0), "cpu")
    assert x.shape == y.shape == (5, 7) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # consecutive ids: each row is a slice, y is x shifted by one
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)
    assert int(y.max()) <= 99


def test_get_batch_is_reproducible_per_generator():
    ids = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(1))
    a = get_batch(ids, 8, 4, torch.Generator().manual_seed(3))
    b = get_batch(ids, 8, 4, torch.Generator().manual_seed(3))
    c = get_batch(ids, 8, 4, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_refusals():
    with pytest.raises(ValueError, match="needs at least 9"):
        get_batch(torch.arange(8), 8, 2)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(torch.arange(20), 4, 0)
    with pytest.raises(TypeError, match="1-D integer"):
        get_batch(torch.rand(20), 4, 2)


def test_bundled_corpus_matches_the_published_checksum():
    bundled = text_module.BUNDLED_TINYSHAKESPEARE
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == text_module.TINYSHAKESPEARE_SHA256
    corpus = load_text(bundled, block_size=256)
    assert corpus.vocab_size == 65
    assert (len(corpus.train), len(corpus.val)) == (1003854, 111540)


# Download (never the network: a file:// URL with the checksum patched to a tiny file's) ------
@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    source = tmp_path / "source" / "input.txt"
    source.parent.mkdir()
    source.write_bytes(TEXT.encode())
    monkeypatch.setattr(text_module, "TINYSHAKESPEARE_SHA256", hashlib.sha256(TEXT.encode()).hexdigest())
    return source.as_uri()


def test_download_writes_verified_file_and_does_not_fetch_twice(tmp_path, tiny_source, monkeypatch):
    path = download_tinyshakespeare(tmp_path / "data", url=tiny_source)
    assert path == tmp_path / "data" / "tinyshakespeare.txt"
    assert path.read_text() == TEXT

    def no_fetch(url, out):
        raise AssertionError("fetched again")

    monkeypatch.setattr(text_module, "fetch", no_fetch)
    assert download_tinyshakespeare(tmp_path / "data", url=tiny_source) == path


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, tiny_source, monkeypatch):
    monkeypatch.setattr(text_module, "TINYSHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(ChecksumError, match="discarded") as info:
        download_tinyshakespeare(tmp_path / "data", url=tiny_source)
    # The message names the source and both digests: the SHA-256 of what arrived, and the one expected.
    message = str(info.value)
    assert tiny_source in message and hashlib.sha256(TEXT.encode()).hexdigest() in message and "0" * 64 in message
    assert list((tmp_path / "data").iterdir()) == []


def test_download_refuses_to_overwrite_another_file(tmp_path, tiny_source):
    existing = tmp_path / "data" / "tinyshakespeare.txt"
    existing.parent.mkdir()
    existing.write_text("my own notes")
    with pytest.raises(ChecksumError, match="move it away"):
        download_tinyshakespeare(tmp_path / "data", url=tiny_source)
    assert existing.read_text() == "my own notes"


def test_download_failure_names_the_url(tmp_path):
    missing = (tmp_path / "nowhere.txt").as_uri()
    with pytest.raises(OSError, match="nowhere.txt"):
        download_tinyshakespeare(tmp_path / "data", url=missing)
    assert not (tmp_path / "data" / "tinyshakespeare.txt").exists()


def test_find_looks_in_root_then_environment_and_cache_then_the_bundled_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCCAMGD_DATA", raising=False)
    assert find_tinyshakespeare() == text_module.BUNDLED_TINYSHAKESPEARE
    # An explicit root is looked in alone: the bundled copy does not hide a wrong path.
    with pytest.raises(FileNotFoundError, match="download_tinyshakespeare"):
        find_tinyshakespeare(tmp_path / "empty")
    (tmp_path / "env" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "env" / "tinyshakespeare" / "input.txt").write_text(TEXT)
    monkeypatch.setenv("OCCAMGD_DATA", str(tmp_path / "env"))
    assert find_tinyshakespeare() == tmp_path / "env" / "tinyshakespeare" / "input.txt"
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "tinyshakespeare.txt").write_text(TEXT)
    assert find_tinyshakespeare(tmp_path / "root") == tmp_path / "root" / "tinyshakespeare.txt"


def test_find_downloads_into_root_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OCCAMGD_DATA", raising=False)
    calls = []
    monkeypatch.setattr(text_module, "download_tinyshakespeare", lambda root=None: calls.append(root) or Path("x"))
    assert find_tinyshakespeare(tmp_path / "root", download=True) == Path("x")
    assert calls == [tmp_path / "root"]

"""Save and load a pruned model in two safetensors layouts, with their measured sizes.

- **dense**: every tensor of the model's ``state_dict`` as it is, plus one bool mask per pruned
  tensor. Any safetensors reader can open it; loading restores the model and its masks.
- **sparse**: for each masked tensor only its kept values, in the tensor's dtype, plus where they
  sit: a packed bitmask (one bit per entry) or, when it is smaller (density below about 1/32),
  the flat indices of the kept entries. Every other tensor is stored dense.

Tensor names inside a file: ``weights/<key>`` (dense tensors), ``masks/<key>`` (dense layout),
``values/<key>`` with ``bitmask/<key>`` or ``indices/<key>`` (sparse layout). The safetensors
metadata holds the format name and version, the layout, the shapes of the sparse tensors and
the caller's own metadata (JSON). Loading checks the format version, the file's consistency and
the tensor names and shapes against the model before changing anything.

A file is untrusted input: every size it records is checked against the data it holds before
anything is allocated (a sparse tensor's recorded shape is bounded by its bitmask, or, for the
index form, by the model it is loaded into or by ``max_elements``), and its weights must be finite.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import nn

from .errors import InvalidTypeError, InvalidValueError, MissingFileError
from .io import atomic_write

FORMAT_NAME = "occamgd.export"
#: Version of the layout written here; files with a larger version are refused on load.
EXPORT_FORMAT = 1
LAYOUTS = ("dense", "sparse")
#: File names that :func:`save` writes in a directory.
FILE_NAMES = {"dense": "model.safetensors", "sparse": "model.sparse.safetensors"}
#: The most elements :func:`load` expands sparse tensors in the index form to, when no model bounds
#: them: the file holds no evidence of their size (268M elements: 1 GiB of float32).
MAX_ELEMENTS = 2**28


@dataclass
class Exported:
    """What :func:`load` reads: a ``state_dict``, the masks, the caller's metadata, the layout."""

    state_dict: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: str = "dense"


# Saving -------------------------------------------------------------------------------------
def _state_and_masks(model: nn.Module | Mapping[str, torch.Tensor],
                     masks: Mapping[str, torch.Tensor] | None) -> tuple[dict, dict]:
    """CPU copies (no shared storage, which safetensors refuses) after checking the masks fit."""
    if isinstance(model, nn.Module):
        state = model.state_dict()
    elif isinstance(model, Mapping):
        state = model
    else:
        raise InvalidTypeError(f"model must be a torch.nn.Module or a state_dict, got {type(model).__name__}")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise InvalidValueError(f"masks name tensors the model does not have: {unknown}; accepted: names of "
                         f"its state_dict, such as {sorted(state)[:4]}")
    out = {}
    for name, mask in masks.items():
        if not (torch.is_tensor(mask) and mask.dtype == torch.bool):
            raise InvalidTypeError(f"mask {name!r} must be a bool tensor, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != tuple(state[name].shape):
            raise InvalidValueError(f"mask {name!r} has shape {tuple(mask.shape)} but the tensor has shape "
                             f"{tuple(state[name].shape)}; accepted: the tensor's shape")
        out[name] = mask.detach().to("cpu", copy=True).contiguous()
    return state, out


def _header(layout: str, metadata: Mapping[str, Any] | None, **extra: Any) -> dict[str, str]:
    try:
        user = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
    except TypeError as e:
        raise InvalidTypeError(f"metadata must be JSON-serialisable: {e}") from e
    except ValueError as e:
        raise InvalidValueError(f"metadata must be standard JSON, without NaN or Infinity: {e}") from e
    header = {"format": FORMAT_NAME, "format_version": str(EXPORT_FORMAT), "layout": layout, "metadata": user}
    header.update({k: json.dumps(v, sort_keys=True) for k, v in extra.items()})
    return header


def _write(tensors: dict[str, torch.Tensor], header: dict[str, str], path: str | os.PathLike) -> int:
    blob = _safetensors_bytes(tensors, metadata=header)
    return atomic_write(path, lambda f: f.write(blob)).stat().st_size


def save_dense(model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
               path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> int:
    """Write the dense layout (all weights and the masks) atomically; return the file's size in bytes."""
    state, masks = _state_and_masks(model, masks)
    tensors = {f"weights/{k}": v for k, v in state.items()}
    tensors.update({f"masks/{k}": m for k, m in masks.items()})
    return _write(tensors, _header("dense", metadata), path)


def save_sparse(model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
                path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> int:
    """Write the sparse layout (kept values plus bitmask or indices) atomically; return its size in bytes.

    Refuses (``ValueError``) a tensor with non-zero weights where its mask prunes: the sparse form
    would silently drop them. Occam keeps pruned weights at zero, so this only happens when the
    weights were changed outside it (call ``occam.enforce()`` first).
    """
    state, masks = _state_and_masks(model, masks)
    tensors, shapes = {}, {}
    for key, value in state.items():
        mask = masks.get(key)
        if mask is None:
            tensors[f"weights/{key}"] = value
            continue
        stray = int(torch.count_nonzero(value[~mask]))
        if stray:
            raise InvalidValueError(f"tensor {key!r} has {stray} non-zero weights where its mask prunes; the "
                             "sparse layout would drop them. Zero them first (occam.enforce()), or "
                             "save the dense layout")
        flat = mask.reshape(-1)
        kept = int(flat.sum())
        tensors[f"values/{key}"] = value.reshape(-1)[flat].contiguous()
        index_dtype = torch.int32 if flat.numel() <= np.iinfo(np.int32).max else torch.int64
        index_bytes = kept * (4 if index_dtype == torch.int32 else 8)
        if index_bytes < math.ceil(flat.numel() / 8):
            tensors[f"indices/{key}"] = torch.nonzero(flat).reshape(-1).to(index_dtype)
        else:
            tensors[f"bitmask/{key}"] = torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
        shapes[key] = list(value.shape)
    return _write(tensors, _header("sparse", metadata, shapes=shapes), path)


def save(model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
         directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Write both layouts into ``directory``; return ``{layout: {"file": name, "bytes": size}}``.

    The sizes are measured on disk after writing. ``metadata`` (JSON-serialisable) is stored in
    both files and returned by :func:`load`.
    """
    directory = Path(directory)
    sizes = {}
    for layout, writer in (("dense", save_dense), ("sparse", save_sparse)):
        sizes[layout] = {"file": FILE_NAMES[layout], "bytes": writer(model, masks, directory / FILE_NAMES[layout],
                                                                      metadata)}
    return sizes


# Loading ------------------------------------------------------------------------------------
def _open(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise MissingFileError(f"export file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise InvalidValueError(f"{path} is not a readable safetensors file: {e}") from e
    if header.get("format") != FORMAT_NAME:
        raise InvalidValueError(f"{path} is not an occamgd export (its metadata has format "
                         f"{header.get('format')!r}; accepted: {FORMAT_NAME!r})")
    try:
        version = int(header.get("format_version", ""))
    except ValueError:
        raise InvalidValueError(f"{path}: format_version {header.get('format_version')!r} is not an integer") from None
    if version > EXPORT_FORMAT:
        raise InvalidValueError(f"{path} has format version {version}, written by a newer occamgd; this one reads "
                         f"versions up to {EXPORT_FORMAT}: upgrade occamgd")
    if header.get("layout") not in LAYOUTS:
        raise InvalidValueError(f"{path}: layout {header.get('layout')!r} is unknown; accepted: {LAYOUTS}")
    return header, tensors


def _json(header: dict[str, str], key: str, path: Path) -> Any:
    try:
        value = json.loads(header.get(key, "{}"))
    except json.JSONDecodeError as e:
        raise InvalidValueError(f"{path}: metadata {key!r} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidValueError(f"{path}: metadata {key!r} holds {type(value).__name__}, not a JSON object")
    return value


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The caller's metadata and every tensor's shape, read from the header without loading a tensor.

    The safetensors header is checked against the file (every tensor's bytes present)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"export file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise InvalidValueError(f"{path} is not a readable safetensors file: {e}") from e
    if header.get("format") != FORMAT_NAME:
        raise InvalidValueError(f"{path} is not an occamgd export (its metadata has format "
                                f"{header.get('format')!r}; accepted: {FORMAT_NAME!r})")
    return _json(header, "metadata", path), shapes


def _split_names(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind, sep, key = name.partition("/")
        if not sep or kind not in ("weights", "masks", "values", "bitmask", "indices"):
            raise InvalidValueError(f"{path}: tensor name {name!r} is not one of weights/, masks/, values/, "
                             "bitmask/ or indices/ followed by a state_dict key")
        groups.setdefault(kind, {})[key] = tensor
    return groups


def _shape(key: str, shape: Any, path: Path) -> list[int]:
    if not (isinstance(shape, list) and len(shape) <= 64
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise InvalidValueError(f"{path}: the recorded shape of {key!r} is {shape!r}; accepted: a list of sizes "
                                "(integers >= 0)")
    return shape


def _unpack(key: str, shape: list[int], values: torch.Tensor, groups: dict, path: Path) -> tuple:
    """Rebuild one sparse tensor and its mask, checking every count and index on the way."""
    numel = math.prod(shape)
    if key in groups.get("bitmask", {}):
        packed = groups["bitmask"][key]
        if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != math.ceil(numel / 8):
            raise InvalidValueError(f"{path}: bitmask of {key!r} has {packed.numel()} {packed.dtype} entries; a tensor "
                             f"of shape {shape} needs {math.ceil(numel / 8)} uint8")
        flat = torch.from_numpy(np.unpackbits(packed.numpy(), count=numel, bitorder="little").astype(bool))
    elif key in groups.get("indices", {}):
        index = groups["indices"][key]
        if index.dtype not in (torch.int32, torch.int64) or index.dim() != 1:
            raise InvalidValueError(f"{path}: indices of {key!r} are {index.dtype} of {index.dim()} dimensions; "
                                    "accepted: one dimension of int32 or int64")
        index = index.to(torch.int64)
        if index.numel() and (index.min() < 0 or index.max() >= numel or not bool((index[1:] > index[:-1]).all())):
            raise InvalidValueError(f"{path}: indices of {key!r} are not increasing positions in [0, {numel})")
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[index] = True
    else:
        raise InvalidValueError(f"{path}: sparse tensor {key!r} has values but neither bitmask/ nor indices/")
    if values.dim() != 1 or values.numel() != int(flat.sum()):
        raise InvalidValueError(f"{path}: {key!r} stores {values.numel()} values for {int(flat.sum())} kept entries")
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(shape), flat.reshape(shape)


def _check_finite(name: str, tensor: torch.Tensor, path: Path) -> None:
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise InvalidValueError(f"{path}: tensor {name!r} holds {bad} non-finite values (NaN or infinity); "
                                    "the weights are damaged: save them again (or pass check_finite=False to "
                                    "read them anyway)")


def _mismatch(theirs: Mapping[str, tuple], ours: Mapping[str, tuple], name: str, source: str) -> str | None:
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [f"{k}: {tuple(theirs[k])} in the {source}, {tuple(ours[k])} in the model"
              for k in sorted(set(ours) & set(theirs)) if tuple(ours[k]) != tuple(theirs[k])]
    if missing or unexpected or shapes:
        return (f"the {source} does not fit {name}: missing tensors {missing}, unexpected tensors {unexpected}, "
                f"shape mismatches {shapes}; accepted: a file saved from the same architecture")
    return None


def load(path: str | os.PathLike, *, max_elements: int = MAX_ELEMENTS, check_finite: bool = True,
         expected: Mapping[str, tuple] | None = None) -> Exported:
    """Read either layout back: the ``state_dict`` (pruned entries zero), the masks, the metadata.

    Nothing recorded in the file is trusted: the sparse layout's shapes must be sizes that its
    bitmask covers or, in the index form (which holds no evidence of the size), together at most
    ``max_elements`` elements, unless ``expected`` (tensor name -> shape, what :func:`load_into`
    passes) bounds them first; every floating-point tensor must be finite unless ``check_finite``
    is false.
    """
    path = Path(path)
    header, tensors = _open(path)
    groups = _split_names(tensors, path)
    state = dict(groups.get("weights", {}))
    masks = {k: m for k, m in groups.get("masks", {}).items()}
    for key, mask in masks.items():
        if key not in state or mask.dtype != torch.bool or mask.shape != state[key].shape:
            raise InvalidValueError(f"{path}: mask {key!r} has no tensor of the same shape, or is not bool")
    if header["layout"] == "sparse":
        shapes = {key: _shape(key, shape, path) for key, shape in _json(header, "shapes", path).items()}
        if set(shapes) != set(groups.get("values", {})):
            raise InvalidValueError(f"{path}: the sparse tensors {sorted(groups.get('values', {}))} do not match "
                             f"the shapes recorded for {sorted(shapes)}")
        if expected is not None:
            theirs = {**{k: tuple(v.shape) for k, v in state.items()}, **{k: tuple(v) for k, v in shapes.items()}}
            problem = _mismatch(theirs, expected, "the model", f"export {path}")
            if problem:
                raise InvalidValueError(problem)
        else:
            unbacked = 0
            for key, shape in shapes.items():
                if key not in groups.get("bitmask", {}):
                    unbacked += math.prod(shape)
                    if unbacked > max_elements:
                        raise InvalidValueError(
                            f"{path}: sparse tensor {key!r} of shape {shape} would expand to {math.prod(shape):,} "
                            f"elements that the file holds no evidence of; accepted: up to max_elements="
                            f"{max_elements:,} in all (pass a larger max_elements, or load_into a model of that shape)")
        for key, shape in shapes.items():
            if key in state:
                raise InvalidValueError(f"{path}: {key!r} is stored both dense and sparse")
            if check_finite:
                _check_finite(key, groups["values"][key], path)
            state[key], masks[key] = _unpack(key, shape, groups["values"][key], groups, path)
    if check_finite:
        for key in groups.get("weights", {}):
            _check_finite(key, state[key], path)
    return Exported(state_dict=state, masks=masks, metadata=_json(header, "metadata", path), layout=header["layout"])


def check_compatible(state: Mapping[str, torch.Tensor], model: nn.Module, source: str = "export") -> None:
    """Raise ``ValueError`` naming every tensor whose name or shape differs between ``state`` and ``model``."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    problem = _mismatch(theirs, ours, type(model).__name__, source)
    if problem:
        raise InvalidValueError(problem)


def load_into(model: nn.Module, path: str | os.PathLike, *, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Load an export into ``model`` (left unchanged on any error); return its masks.

    The file's recorded shapes are checked against the model's before anything is expanded. The
    masks come back on the devices of their tensors, ready for ``Occam(...).masks.update``.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    exported = load(path, check_finite=check_finite, expected=expected)
    check_compatible(exported.state_dict, model, f"export {path}")
    model.load_state_dict(exported.state_dict)
    devices = {k: v.device for k, v in model.state_dict().items()}
    return {k: m.to(devices[k]) for k, m in exported.masks.items()}

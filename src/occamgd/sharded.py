"""Occam on sharded parameters (FSDP2's ``fully_shard``, DTensor ``Shard(0)``), with exact masks.

When the prunable parameters are DTensors, :class:`occamgd.Occam` keeps :class:`ShardedMasks`
instead of :class:`~occamgd.masks.Masks` and prunes with :func:`sharded_layerwise` /
:func:`sharded_global` instead of the single-process criteria. Nothing is gathered: each rank
holds, ranks and masks only its own shard, and the ranks agree on the threshold through a few
all-reduces of counts.

Mask representation
    Each mask is a ``DTensor`` of ``bool`` on its weight's mesh with its weight's placements
    (``[Shard(0)]``), so ``masks[name].full_tensor()`` is the whole mask and
    ``masks[name].to_local()`` this rank's rows. Enforcement multiplies the local shards of the
    weights (and of their optimizer state, which FSDP2 keeps as DTensors placed like the
    parameters) in place, one fused multiply, with no communication.

Selection (exact)
    The single-process criteria (:mod:`occamgd.criteria`) prune, of ``n`` kept entries, exactly
    ``prune_count(n, rate) = ceil(rate * (n - 1))``: the smallest magnitudes, ties to the lowest
    flat index (for ``global``: tensors in selection order, then flat index). Here the k-th
    smallest magnitude is found by a radix select over the magnitudes' bit patterns (the bits of
    a non-negative IEEE float order like the float): 8 bits per pass, a 256-bin histogram of the
    candidates per group (a tensor for layerwise, all tensors for global), all-reduced, then the
    bin holding the k-th value is refined. Four passes for float32 keys (eight when a weight is
    float64; bfloat16 and float16 magnitudes are compared as float32, exactly as the
    single-process criteria compare them). The entries strictly below the k-th value are pruned;
    of those equal to it, the ones with the lowest global flat index: with ``Shard(0)`` a
    rank's rows are one contiguous range of the row-major flat index starting at
    ``row_offset * row_size``, so one all-reduce of every rank's tie count and offset tells
    each rank how many of its ties come first.

Cost per prune: ``passes + 3`` all-reduces (7 for float32 weights): the decision check in
``Occam.step`` (4 float64: every rank must decide the same rate and rollback), the ``passes``
histograms (``G * 256`` int64 each; G groups: the tensors for layerwise, 1 for global), the tie
counts and row offsets (``tensors * ranks * 2`` int64) and the new kept counts (``tensors``
int64), so ``8 * (256 * passes * G + tensors * (2 * ranks + 1) + 4)`` bytes per rank whatever the
tensors' sizes. Memory per rank: a few bools per local weight and temporaries of ``CHUNK``
entries, never a full tensor (``benchmarks/fsdp_prune.py`` measures both).

Accepted: prunable parameters that are all DTensors on one 1-D device mesh with placements
``[Shard(0)]`` (FSDP2's default). Tensor parallelism (``Shard(d)`` for ``d > 0``), 2-D meshes
(HSDP), ``Replicate`` placements, a mix of DTensor and plain prunable tensors, and criteria other
than ``"layerwise"`` and ``"global"`` (structured and N:M groups; custom callables unless marked
``sharded = True``) are refused with :class:`~occamgd.errors.InvalidValueError`.

Checkpoints: :class:`Checkpointable` for ``torch.distributed.checkpoint`` (sharded, reshards to
another rank count), :func:`full_state_dict` for one file with whole masks (loads on any rank
count and into a single-process Occam).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .criteria import Criterion, _check_rate, global_magnitude, layerwise_magnitude, prune_count
from .errors import InvalidTypeError, InvalidValueError
from .masks import Masks

_BITS = 8
_BINS = 1 << _BITS


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter sharded or placed by torch.distributed)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def any_sharded(params: Mapping[str, torch.Tensor]) -> bool:
    return any(is_sharded(p) for p in params.values())


_ACCEPTED = (
    "accepted: prunable parameters that are all DTensors on one 1-D device mesh with placements "
    "[Shard(0)] (torch.distributed.fsdp.fully_shard's default), or none of them DTensors"
)


def check_shardable(params: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every prunable tensor is a ``Shard(0)`` DTensor on one common 1-D mesh."""
    from torch.distributed.tensor import Shard

    plain = [n for n, p in params.items() if not is_sharded(p)]
    if plain:
        sharded = [n for n, p in params.items() if is_sharded(p)]
        raise InvalidValueError(
            f"prunable tensors mix sharded and unsharded parameters: {sharded[:3]} are DTensors but {plain[:3]} "
            f"are plain tensors; {_ACCEPTED}. Shard every module holding a prunable weight (fully_shard on "
            "the root covers them all) or leave the plain ones out with exclude="
        )
    mesh = None
    for name, p in params.items():
        placements = tuple(p.placements)
        if p.device_mesh.ndim != 1 or len(placements) != 1 or placements[0] != Shard(0):
            raise InvalidValueError(
                f"prunable parameter {name!r} is a DTensor with placements {list(placements)} on a "
                f"{p.device_mesh.ndim}-D mesh; tensor parallelism (Shard on a dim other than 0), Replicate and "
                f"2-D (HSDP) meshes are not supported; {_ACCEPTED}"
            )
        if p.dim() == 0:
            raise InvalidValueError(f"prunable parameter {name!r} is a 0-d DTensor; {_ACCEPTED}")
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise InvalidValueError(
                f"prunable parameter {name!r} lives on another device mesh than the others; {_ACCEPTED}"
            )


class _Layout:
    """Where one rank's shard of a ``Shard(0)`` DTensor sits in the tensor (fixed for its life)."""

    def __init__(self, p: torch.Tensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        self.mesh, self.placements = p.device_mesh, tuple(p.placements)
        self.shape, self.stride = tuple(p.shape), tuple(p.stride())
        self.local_shape, offset = compute_local_shape_and_global_offset(p.shape, self.mesh, self.placements)
        self.row = math.prod(self.shape[1:])
        self.flat_offset = offset[0] * self.row if self.local_shape[0] else 0
        self.local_numel = math.prod(self.local_shape)

    def dtensor(self, local: torch.Tensor):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, self.mesh, self.placements, run_check=False, shape=self.shape,
                                  stride=self.stride)

    def local_of_full(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full (global-shape) tensor, without communication."""
        return full.reshape(-1)[self.flat_offset: self.flat_offset + self.local_numel].reshape(self.local_shape)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if is_sharded(t) else t


class ShardedMasks(Masks):
    """:class:`~occamgd.masks.Masks` for DTensor parameters: each mask a bool DTensor placed like its weight.

    ``masks[name]`` is the DTensor (``.to_local()``: this rank's rows, ``.full_tensor()``: the
    whole mask, a collective). Counting (``kept``, ``density``, ``densities``) reads counts
    all-reduced when the masks last changed, so it is local and may be called on one rank only.
    Changing masks (``update``, ``load_state_dict``) is collective: every rank calls it.
    ``update`` accepts, per tensor, a DTensor placed like the weight, or a full plain bool
    tensor of the weight's global shape (each rank keeps its own rows of it).
    """

    sharded = True

    def __init__(self, params: Mapping[str, nn.Parameter]):
        check_shardable(params)
        self.params = dict(params)
        self.layouts = {name: _Layout(p) for name, p in self.params.items()}
        first = next(iter(self.params.values()))
        self.mesh = first.device_mesh
        self.group = self.mesh.get_group()
        device = first._local_tensor.device
        # gloo reduces host tensors; nccl wants them on the device.
        self.comm_device = torch.device("cpu") if dist.get_backend(self.group) == "gloo" else device
        self._masks = {
            name: lay.dtensor(torch.ones(lay.local_shape, dtype=torch.bool, device=device))
            for name, lay in self.layouts.items()
        }
        self._kept = {name: math.prod(lay.shape) for name, lay in self.layouts.items()}
        self._refresh_multipliers()

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    # Counting (cached global counts) ------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(math.prod(lay.shape) for lay in self.layouts.values())

    @property
    def kept(self) -> int:
        return sum(self._kept.values())

    def densities(self) -> dict[str, float]:
        return {name: self._kept[name] / math.prod(self.layouts[name].shape) for name in self._masks}

    def _recount(self) -> None:
        names = list(self._masks)
        local = torch.tensor([int(self._masks[n]._local_tensor.sum()) for n in names], dtype=torch.int64,
                             device=self.comm_device)
        dist.all_reduce(local, group=self.group)
        self._kept = dict(zip(names, local.tolist()))

    # Changing ------------------------------------------------------------------------------
    def _as_local(self, name: str, mask: torch.Tensor, what: str) -> torch.Tensor:
        lay = self.layouts[name]
        if is_sharded(mask):
            if (mask.device_mesh != lay.mesh or tuple(mask.placements) != lay.placements
                    or tuple(mask._local_tensor.shape) != tuple(lay.local_shape)):
                raise InvalidValueError(
                    f"{what}: mask for {name!r} is a DTensor on mesh {mask.device_mesh} with placements "
                    f"{list(mask.placements)} and local shape {tuple(mask._local_tensor.shape)}, but the weight is "
                    f"sharded over {lay.mesh} as {list(lay.placements)} with local shape {tuple(lay.local_shape)} "
                    "(was it saved with another number of ranks?); accepted: a DTensor placed like its weight, a "
                    "full bool tensor of the weight's shape (occamgd.sharded.full_state_dict), or a checkpoint "
                    "through torch.distributed.checkpoint, which reshards"
                )
            local = mask._local_tensor
        else:
            local = lay.local_of_full(mask)
        return local.to(device=self.params[name]._local_tensor.device, dtype=torch.bool).clone()

    def update(self, new_masks: Mapping[str, torch.Tensor]) -> None:
        """Replace masks (collective); weights are zeroed where pruned."""
        self.check(new_masks, "new masks")
        locals_ = {name: self._as_local(name, mask, "new masks") for name, mask in new_masks.items()}
        for name in list(locals_):
            self._masks[name] = self.layouts[name].dtensor(locals_.pop(name))
        self._recount()
        self._refresh_multipliers()
        self.apply()

    def _refresh_multipliers(self) -> None:
        # A tensor is skipped only when no rank has pruned any of it (global counts): every rank
        # then runs the same enforcement, whatever its own shard holds.
        pruned = [n for n in self._masks if self._kept[n] < math.prod(self.layouts[n].shape)]
        self._param_list, self._mult = [], []  # the old multipliers go first: never two sets at once
        self._param_list = [self.params[n] for n in pruned]
        self._mult = [self._masks[n]._local_tensor.to(self.params[n].dtype) for n in pruned]

    # Enforcing (local shards only, no communication) ---------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        if self._param_list:
            # Read the local tensors now: FSDP2 may re-point a parameter's local tensor at lazy init.
            torch._foreach_mul_([_local(p) for p in self._param_list], self._mult)

    @torch.no_grad()
    def apply_to_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        tensors, mults = [], []
        for param, mult in zip(self._param_list, self._mult):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    local = _local(value)
                    if local.shape != mult.shape:
                        continue
                    tensors.append(local)
                    mults.append(mult if local.dtype == mult.dtype else mult.to(local.dtype))
        if tensors:
            torch._foreach_mul_(tensors, mults)

    # Checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The masks as DTensors (for ``torch.distributed.checkpoint``); see :func:`full_state_dict`."""
        return {name: lay.dtensor(self._masks[name]._local_tensor.clone()) for name, lay in self.layouts.items()}

    def full(self) -> dict[str, torch.Tensor]:
        """The whole masks as plain bool tensors on the CPU (collective: an all-gather per tensor)."""
        return {name: m.full_tensor().cpu() for name, m in self._masks.items()}

    def _shape(self, name: str) -> tuple[int, ...]:
        return self.layouts[name].shape

    def _check_layout(self, name: str, mask: torch.Tensor, what: str) -> None:
        if is_sharded(mask):
            self._as_local(name, mask, what)  # placement check


def make_masks(params: Mapping[str, nn.Parameter]) -> Masks:
    """:class:`ShardedMasks` when any prunable parameter is a DTensor (all must be), else :class:`Masks`."""
    return ShardedMasks(params) if any_sharded(params) else Masks(params)


# Exact distributed selection ------------------------------------------------------------------
#: Entries of a shard handled at once: the selection's temporaries are a few of this size, whatever the shard's.
CHUNK = 1 << 20


def _keys(weight: torch.Tensor, wide: bool):
    """``(start, keys)`` over a local shard, ``CHUNK`` entries at a time: order-preserving integer keys.

    A non-negative IEEE float's bit pattern, read as an integer, orders like the float. bfloat16
    and float16 magnitudes widen to float32 exactly, so their order and ties are kept.
    """
    flat = _local(weight).detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        magnitude = flat[start: start + CHUNK].abs()
        if wide:
            yield start, magnitude.to(torch.float64).view(torch.int64)
        else:
            yield start, magnitude.to(torch.float32).view(torch.int32)


def _select(groups: list[list[str]], weights: Mapping[str, torch.Tensor], masks: ShardedMasks,
            rate: float) -> dict[str, torch.Tensor]:
    """The pruned entries (local bool, flat) of every tensor; each group pruned like one tensor.

    No per-entry state outlives a chunk: the keys are recomputed from the weights, ``CHUNK``
    entries at a time, in every pass, so the extra memory is a few temporaries of ``CHUNK``
    entries, the histograms, and the result (one bool per local entry).
    """
    group, device = masks.group, masks.comm_device
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    names = [n for g in groups for n in g]
    wide = [any(weights[n].dtype == torch.float64 for n in g) for g in groups]
    bits = 64 if any(wide) else 32
    passes = bits // _BITS
    if bits == 64:  # float32 keys of other groups widen, so that every pass shifts within range
        wide = [True] * len(groups)
    local_mask = {n: masks[n]._local_tensor.reshape(-1) for n in names}
    kept = masks._kept
    target = [prune_count(sum(kept[n] for n in g), rate) for g in groups]  # 1-based rank of the k-th value
    active = [k > 0 for k in target]
    prefix = [0] * len(groups)
    # Radix select from the top digit: histogram the candidates' digit (the kept entries whose
    # higher digits equal the prefix found so far), all-reduce, keep the bin holding the k-th.
    for p in range(passes):
        shift = (passes - 1 - p) * _BITS
        hist = torch.zeros(len(groups), _BINS, dtype=torch.int64, device=device)
        for gi, g in enumerate(groups):
            if not active[gi]:
                continue
            for n in g:
                for start, keys in _keys(weights[n], wide[gi]):
                    candidates = local_mask[n][start: start + keys.numel()]
                    if p:
                        candidates = candidates & ((keys >> (shift + _BITS)) == prefix[gi])
                    digits = (keys[candidates] >> shift) & (_BINS - 1)
                    hist[gi] += torch.bincount(digits, minlength=_BINS).to(device)
        dist.all_reduce(hist, group=group)
        cum = hist.cumsum(1).tolist()
        for gi in range(len(groups)):
            if active[gi]:
                b = next(i for i, c in enumerate(cum[gi]) if c >= target[gi])
                target[gi] -= cum[gi][b - 1] if b else 0
                prefix[gi] = (prefix[gi] << _BITS) | b
    # prefix is now the k-th key; `target` of the entries equal to it are pruned, lowest global index first.
    ties = torch.zeros(world, len(names), 2, dtype=torch.int64, device=device)
    below, tied = {}, {}
    i = 0
    for gi, g in enumerate(groups):
        for n in g:
            if active[gi]:
                below[n], tied[n] = torch.zeros_like(local_mask[n]), torch.zeros_like(local_mask[n])
                for start, keys in _keys(weights[n], wide[gi]):
                    end = start + keys.numel()
                    below[n][start:end] = local_mask[n][start:end] & (keys < prefix[gi])
                    tied[n][start:end] = local_mask[n][start:end] & (keys == prefix[gi])
            else:
                below[n] = tied[n] = torch.zeros_like(local_mask[n])
            ties[rank, i, 0] = int(tied[n].sum())
            ties[rank, i, 1] = masks.layouts[n].flat_offset
            i += 1
    dist.all_reduce(ties, group=group)
    ties = ties.tolist()
    pruned = {}
    i = 0
    for gi, g in enumerate(groups):
        before = 0  # ties of this group in its earlier tensors (all ranks): lower global index
        for n in g:
            mine = ties[rank][i][1]
            lower = sum(ties[r][i][0] for r in range(world)
                        if ties[r][i][1] < mine or (ties[r][i][1] == mine and r < rank))
            take = max(0, min(target[gi] - before - lower, ties[rank][i][0])) if active[gi] else 0
            _first(tied[n], take, into=below[n])
            pruned[n] = below.pop(n)
            del tied[n]
            before += sum(ties[r][i][0] for r in range(world))
            i += 1
    return pruned


def _first(tied: torch.Tensor, take: int, into: torch.Tensor) -> None:
    """Set in ``into`` the first ``take`` True entries of flat bool ``tied``, chunk by chunk (no full-size index)."""
    for start in range(0, tied.numel(), CHUNK):
        if take <= 0:
            break
        part, out = tied[start: start + CHUNK], into[start: start + CHUNK]
        count = int(part.sum())
        out |= part if count <= take else part & (torch.cumsum(part, 0) <= take)
        take -= count


def agree(masks: ShardedMasks, rate: float, restore: bool) -> None:
    """Raise on every rank unless every rank decided the same rate and rollback (one all-reduce).

    A rank that decided otherwise would search another k, or skip the collectives of a prune.
    """
    check = torch.tensor([rate, -rate, float(restore), -float(restore)], dtype=torch.float64,
                         device=masks.comm_device)
    dist.all_reduce(check, op=dist.ReduceOp.MAX, group=masks.group)
    high, low, any_restore, all_restore = check[0].item(), -check[1].item(), check[2].item(), -check[3].item()
    if high != low or any_restore != all_restore:
        raise InvalidValueError(
            f"ranks decided differently (rates from {low} to {high}, here {rate}; rollback on "
            f"{'some' if any_restore != all_restore else 'no'} ranks): their schedules saw different signals; "
            "accepted: the same signal on every rank, or occamgd.integrations.distributed.DistributedOccam, which "
            "averages the ranks' signals"
        )


def _masks_from(pruned: Mapping[str, torch.Tensor], masks: ShardedMasks) -> dict[str, torch.Tensor]:
    out = {}
    for n, flat in pruned.items():
        lay = masks.layouts[n]
        keep = torch.logical_not(flat, out=flat).view(lay.local_shape)  # in place: no second bool per entry
        keep &= masks[n]._local_tensor
        out[n] = lay.dtensor(keep)
    return out


def sharded_layerwise(weights: Mapping[str, torch.Tensor], masks: ShardedMasks, rate: float) -> dict[str, torch.Tensor]:
    """:func:`occamgd.criteria.layerwise_magnitude` over sharded tensors, exactly (collective)."""
    _check_rate(rate)
    return _masks_from(_select([[n] for n in weights], weights, masks, rate), masks)


def sharded_global(weights: Mapping[str, torch.Tensor], masks: ShardedMasks, rate: float) -> dict[str, torch.Tensor]:
    """:func:`occamgd.criteria.global_magnitude` over sharded tensors, exactly (collective)."""
    _check_rate(rate)
    return _masks_from(_select([list(weights)], weights, masks, rate), masks)


SHARDED_CRITERIA = {layerwise_magnitude: sharded_layerwise, global_magnitude: sharded_global}


def sharded_criterion(criterion: Criterion) -> Criterion:
    """The sharded counterpart of a single-process criterion; ``InvalidValueError`` if there is none."""
    if getattr(criterion, "sharded", False):  # a custom criterion that handles DTensors itself
        return criterion
    inner = criterion
    while inner not in SHARDED_CRITERIA and hasattr(inner, "__wrapped__"):
        inner = inner.__wrapped__
    if inner in SHARDED_CRITERIA:
        sharded = SHARDED_CRITERIA[inner]
        if inner is criterion:
            return sharded
        # A wrapper (DistributedOccam's broadcast) is replaced: shards are chosen exactly on every rank.
        return functools.wraps(criterion)(sharded)
    raise InvalidValueError(
        f"criterion {getattr(criterion, '__name__', criterion)!r} cannot prune sharded (DTensor) parameters; "
        "accepted with FSDP2: 'layerwise' or 'global' (exact across shards), or a callable with an attribute "
        "sharded=True that takes DTensor weights and masks and returns DTensor masks; structured and N:M "
        "criteria over shards are not supported yet"
    )


# Checkpoints ----------------------------------------------------------------------------------
def full_state_dict(occam) -> dict[str, Any]:
    """``occam.state_dict()`` with every DTensor gathered into a plain CPU tensor (collective).

    The result is what a single-process Occam saves (it loads into one, and into a sharded Occam
    on any number of ranks: each rank keeps its own rows). Call it on every rank; save it from
    rank 0.
    """
    state = occam.state_dict()
    return _gathered(state)


def _gathered(value):
    if is_sharded(value):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {k: _gathered(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_gathered(v) for v in value]
    return value


def local_to_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A DTensor ``value`` placed like DTensor ``like``, its local tensor moved to ``like``'s device."""
    if not (is_sharded(value) and is_sharded(like)) or value._local_tensor.device == like._local_tensor.device:
        return value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(value._local_tensor.to(like._local_tensor.device), like.device_mesh, like.placements,
                              run_check=False, shape=like.shape, stride=like.stride())


def reshard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor as a DTensor placed like ``like`` (this rank's rows of it), or ``value`` unchanged."""
    if not is_sharded(like) or is_sharded(value):
        return value
    return _Layout(like).dtensor(_Layout(like).local_of_full(value).to(like._local_tensor.device).clone())


class Checkpointable:
    """``occam`` as a ``torch.distributed.checkpoint`` ``Stateful``: its masks saved sharded, each rank its rows.

    ::

        import torch.distributed.checkpoint as dcp
        dcp.save({"model": msd, "optim": osd, "occam": Checkpointable(occam)}, checkpoint_id=path)
        dcp.load({"model": msd, "optim": osd, "occam": Checkpointable(occam)}, checkpoint_id=path)

    ``dcp.load`` fills the same structure that ``dcp.save`` wrote, so the state here has a fixed
    shape whatever the run's stage: the masks (DTensors), the rollback snapshot's tensors (the
    current weights and masks as stand-ins while there is none, so a checkpoint written without
    a snapshot costs as much as one with) and everything else pickled into one ``bytes`` entry
    (controller state, history, counters). DCP reshards on load: a checkpoint written on N ranks
    loads on M, and the masks come back exactly (each rank receives its rows).
    """

    def __init__(self, occam):
        self.occam = occam

    def state_dict(self) -> dict[str, Any]:
        import pickle

        occam = self.occam
        state = occam.state_dict()
        snapshot = state.pop("snapshot")
        masks = state.pop("masks")
        if snapshot is None:
            unwrap = _unwrap(occam.model)
            snapshot_tensors = {
                "model": {unwrap(k): v.detach().clone() for k, v in occam.model.state_dict().items()},
                "masks": {k: v.clone() for k, v in occam.masks.state_dict().items()},
            }
        else:
            snapshot_tensors = snapshot
        meta = {"state": state, "has_snapshot": snapshot is not None}
        return {"masks": masks, "snapshot": snapshot_tensors, "meta": pickle.dumps(meta)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import pickle

        meta = pickle.loads(state["meta"])
        full = dict(meta["state"])
        full["masks"] = dict(state["masks"])
        full["snapshot"] = ({"model": dict(state["snapshot"]["model"]), "masks": dict(state["snapshot"]["masks"])}
                            if meta["has_snapshot"] else None)
        self.occam.load_state_dict(full)


def _unwrap(model):
    from .masks import unwrapped_names

    return unwrapped_names(model)

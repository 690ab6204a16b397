"""How to choose what to prune: pure functions ``(weights, masks, rate) -> new masks``.

A criterion never changes its inputs and never revives a pruned entry. ``rate`` is the fraction
of the *remaining* weights to prune in this step.

Counting rule (shared by both magnitude criteria): of ``n`` kept entries, the paper prunes
those whose magnitude lies strictly below the ``rate``-quantile of the kept magnitudes (the
linear-interpolation quantile of numpy and Keras' reference). For distinct magnitudes that is
exactly ``ceil(rate * (n - 1))`` entries, so a tensor with one kept entry is never emptied.
We prune exactly that many: the smallest magnitudes, and among equal magnitudes the lowest flat
index first, so ties and tiny tensors give the same masks on every run and device.

Two more families (see :func:`structured_magnitude` and :func:`nm_magnitude`):

- **structured**: whole output units (rows: Linear neurons, Conv output channels, attention
  heads through :class:`Units`) by the L2 norm of their weights, so that
  :func:`occamgd.compact` can remove them and the network gets physically smaller; and whole
  *coupled groups* (:func:`group_magnitude`, :class:`GroupCriterion`): every unit scored by all
  the weights tied to it across layers (residual additions, concatenations, attention heads),
  the groups :func:`occamgd.compaction.structured_pruning` finds by tracing the model;
- **N:M** (2:4 by default): at most N kept weights in every group of M consecutive input weights,
  the pattern that sparse tensor cores execute.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import InvalidTypeError, InvalidValueError

Criterion = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], float], dict[str, torch.Tensor]]


def prune_count(n_kept: int, rate: float) -> int:
    """How many of ``n_kept`` entries fall strictly below the ``rate``-quantile (distinct values)."""
    _check_rate(rate)
    if n_kept <= 1 or rate == 0.0:
        return 0
    # Rounding guards against 0.28 * 25 == 7.000000000000001 adding one entry.
    return math.ceil(round(rate * (n_kept - 1), 9))


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise InvalidValueError(f"rate must be a number in [0, 1), got {rate!r}")


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a 1-D tensor, by the fastest method on its device."""
    if values.device.type == "cpu":
        # Quickselect: about 20 ms per million values on CPU, 4x faster than a full sort.
        return torch.kthvalue(values, k).values
    # On GPUs kthvalue is ~100x slower than a radix sort (measured on an H100: 720 ms vs 5 ms for 100 M values).
    return torch.sort(values).values[k - 1]


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` smallest entries of a 1-D tensor; ties go to the lowest index."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return chosen
    kth = _kth_smallest(scores, k)
    below = scores < kth
    tied = scores == kth
    need = k - int(below.sum())
    if int(tied.sum()) > need:
        tied &= torch.cumsum(tied, 0) <= need
    return below | tied


def _scores(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Magnitudes of kept entries; +inf where already pruned, so they are never chosen again."""
    return weight.detach().abs().flatten().masked_fill(~mask.flatten(), math.inf)


def layerwise_magnitude(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float
) -> dict[str, torch.Tensor]:
    """The paper's criterion: in each tensor separately, prune the ``rate``-quantile of |w|."""
    _check_rate(rate)
    new = {}
    for name, weight in weights.items():
        mask = masks[name]
        k = prune_count(int(mask.sum()), rate)
        pruned = smallest_k(_scores(weight, mask), k).view_as(mask)
        new[name] = mask & ~pruned
    return new


def global_magnitude(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float
) -> dict[str, torch.Tensor]:
    """One threshold across all tensors: prune the ``rate``-quantile of every kept |w| together."""
    _check_rate(rate)
    names = list(weights)
    device = weights[names[0]].device
    # Compare in the widest dtype present (at least float32), so float64 weights keep their order.
    dtype = functools.reduce(torch.promote_types, (weights[n].dtype for n in names), torch.float32)
    scores = torch.cat([_scores(weights[n], masks[n]).to(device=device, dtype=dtype) for n in names])
    kept = sum(int(masks[n].sum()) for n in names)
    pruned = smallest_k(scores, prune_count(kept, rate))
    new = {}
    for name, chunk in zip(names, torch.split(pruned, [masks[n].numel() for n in names])):
        mask = masks[name]
        new[name] = mask & ~chunk.to(mask.device).view_as(mask)
    return new


# Structured units ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Units:
    """How the rows (dim 0) of one weight group into the units that structured pruning removes.

    By default every row is a unit: a Linear layer's output neuron, a Conv layer's output channel.
    ``size`` consecutive rows form one unit; with ``chunks`` the rows first split into that many
    equal blocks and unit ``u`` owns its ``size`` rows in every block. A fused query/key/value
    projection of ``H`` heads of width ``d`` is ``Units(size=d, chunks=3)``: head ``h`` owns rows
    ``c*H*d + h*d`` to ``c*H*d + (h+1)*d - 1`` for ``c`` = 0, 1, 2 (query, key, value).
    """

    size: int = 1
    chunks: int = 1

    def __post_init__(self):
        for field in ("size", "chunks"):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidValueError(f"Units.{field} must be an integer >= 1, got {value!r}")

    def count(self, name: str, shape: tuple[int, ...]) -> int:
        """How many units a tensor of ``shape`` holds; ``ValueError`` if its rows do not split evenly."""
        if len(shape) < 2:
            raise InvalidValueError(
                f"structured pruning removes whole rows, but {name!r} has shape {tuple(shape)}; "
                "accepted: weights with at least 2 dimensions (leave biases and norms out of the selection)"
            )
        per = self.size * self.chunks
        if shape[0] % per:
            raise InvalidValueError(
                f"{name!r} has {shape[0]} rows, which do not split into units of {self} "
                f"(size * chunks = {per}); accepted: a row count that is a multiple of {per}"
            )
        return shape[0] // per

    def split(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as ``(units, entries of each unit)``."""
        units = tensor.shape[0] // (self.size * self.chunks)
        return tensor.reshape(self.chunks, units, self.size, -1).transpose(0, 1).reshape(units, -1)

    def expand(self, per_unit: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A per-unit tensor broadcast back to every entry of a tensor of ``shape``."""
        rest = math.prod(shape[1:])
        return per_unit.view(1, -1, 1, 1).expand(self.chunks, -1, self.size, rest).reshape(shape)


_ROWS = Units()


def structured_magnitude(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    units: Mapping[str, Units] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune whole units (rows by default) with the smallest L2 norm, in each tensor separately.

    ``rate`` is the fraction of each tensor's remaining *units* to prune: of ``n`` kept units
    exactly ``prune_count(n, rate)`` go, smallest norm first and ties to the lowest index, so a
    tensor always keeps a unit. A unit stays kept while any of its entries is kept; its norm
    counts only the kept entries, and pruning it prunes all of them. ``units`` maps tensor names
    to :class:`Units`; a tensor it does not name has one unit per row.

    The pieces that depend on a unit are not masked here (a criterion sees only the selected
    weights). Its bias stays, so in training a pruned neuron still outputs the constant
    ``act(bias)``; :func:`occamgd.compact` folds that constant through to the next layer's
    bias and removes the next layer's input slices of the unit, so the compacted model computes
    what the masked one computes (in eval mode). By name (``criterion="structured"``,
    :func:`structured_rows`) the last selected tensor keeps its rows (a classifier keeps its
    classes); :func:`occamgd.compaction.structured_pruning` finds the coupled groups of any
    traceable model instead.
    """
    _check_rate(rate)
    units = dict(units or {})
    unknown = sorted(set(units) - set(weights))
    if unknown:
        raise InvalidValueError(f"units names tensors {unknown} that are not being pruned; accepted: names among {list(weights)}")
    new = {}
    for name, weight in weights.items():
        spec, mask = units.get(name, _ROWS), masks[name]
        spec.count(name, tuple(weight.shape))
        kept_entries = spec.split(mask)
        kept_units = kept_entries.any(1)
        dtype = torch.promote_types(weight.dtype, torch.float32)  # half-precision squares overflow
        square = spec.split(weight.detach()).to(dtype).masked_fill(~kept_entries, 0).square().sum(1)
        scores = square.masked_fill(~kept_units, math.inf)
        pruned = smallest_k(scores, prune_count(int(kept_units.sum()), rate))
        new[name] = mask & ~spec.expand(pruned, tuple(mask.shape))
    return new


def structured_rows(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float
) -> dict[str, torch.Tensor]:
    """``criterion="structured"``: :func:`structured_magnitude`, except that the last selected tensor
    keeps all its rows.

    Selected by name, the criterion sees tensors and no graph; the last one, in the model's
    ``named_parameters`` order, is the output layer of almost every model (a classifier's classes,
    an untied language-model head), whose rows are the model's outputs and must not go (pruned,
    a classifier loses classes). Its entries are kept as they are. For the coupled groups of any
    traceable model, and heads tied to an embedding, use
    :func:`occamgd.compaction.structured_pruning` instead.
    """
    names = list(weights)
    if len(names) < 2:
        return structured_magnitude(weights, masks, rate)
    last = names[-1]
    new = structured_magnitude({n: weights[n] for n in names[:-1]}, {n: masks[n] for n in names[:-1]}, rate)
    new[last] = masks[last].clone()
    return new


def structured_criterion(units: Mapping[str, Units]) -> Criterion:
    """:func:`structured_magnitude` with ``units`` bound, for ``Occam(criterion=...)``."""
    units = dict(units)
    for name, spec in units.items():
        if not isinstance(spec, Units):
            raise InvalidTypeError(f"units[{name!r}] must be an occamgd.criteria.Units, got {spec!r}")

    def structured(weights, masks, rate):
        return structured_magnitude(weights, masks, rate, units)

    return structured


# Coupled groups --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Coupled:
    """One weight's share of a group of coupled units: unit ``u`` owns the entries ``index[u]``
    (a ``(units, k)`` integer tensor) along dimension ``dim`` of the tensor named ``param``.

    A ResNet stage's channels, say, are one group: each unit owns a row of every convolution that
    writes the channel (the residual additions make them one channel) and a column of every
    convolution that reads it. :func:`occamgd.compaction.structured_pruning` finds the groups.
    """

    param: str
    dim: int
    index: torch.Tensor
    #: False for tensors pruned with the unit but not scored (its biases, its batch-norm scale and shift).
    score: bool = True


def _gather(t: torch.Tensor, member: Coupled) -> torch.Tensor:
    """The entries of ``t`` that each unit owns, as ``(units, entries)``."""
    index = member.index.to(t.device)
    return t.movedim(member.dim, 0)[index.reshape(-1)].reshape(index.shape[0], -1)


def group_scores(weights, masks, group):
    """Per unit of one group: the summed squares of its kept weights (``inf`` where pruned) and
    whether it is kept (any entry kept)."""
    squares, kept = None, None
    for member in group:
        if not member.score:
            continue
        w, m = weights[member.param], masks[member.param]
        dtype = torch.promote_types(w.dtype, torch.float32)  # half-precision squares overflow
        entries = _gather(m, member)
        sq = _gather(w.detach(), member).to(dtype).masked_fill(~entries, 0).square().sum(1).cpu().double()
        k = entries.any(1).cpu()
        squares = sq if squares is None else squares + sq
        kept = k if kept is None else kept | k
    return squares.masked_fill(~kept, math.inf), kept


def group_magnitude(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    groups: Sequence[Sequence[Coupled]],
    scope: str = "layer",
) -> dict[str, torch.Tensor]:
    """Prune whole units of coupled groups by the L2 norm of all their coupled weights together.

    ``scope="layer"``: in each group separately, of ``n`` kept units ``prune_count(n, rate)`` go,
    smallest norm first, ties to the lowest index, so a group always keeps a unit (the counting
    of :func:`structured_magnitude`). ``scope="global"``: ``prune_count`` of all groups' kept units
    together, by one threshold, each group still keeping its largest unit. Pruning a unit prunes
    every entry it owns in every member; a unit stays kept while any of its scored entries is.
    """
    _check_rate(rate)
    if scope not in ("layer", "global"):
        raise InvalidValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    for group in groups:
        for member in group:
            if member.param not in weights:
                raise InvalidValueError(f"group member {member.param!r} is not among the pruned tensors; accepted: "
                                        f"names among {list(weights)[:4]}...")
    scored = [group_scores(weights, masks, group) for group in groups]
    if scope == "layer":
        chosen = [smallest_k(s, prune_count(int(k.sum()), rate)) for s, k in scored]
    else:
        flat = []
        for s, k in scored:
            s = s.clone()
            if k.any():  # each group keeps its best unit
                s[torch.argmax(s.masked_fill(~k, -math.inf))] = math.inf
            flat.append(s)
        allscores = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)
        kept = sum(int(k.sum()) for _, k in scored)
        k = min(prune_count(kept, rate), int(torch.isfinite(allscores).sum()))
        chosen = list(torch.split(smallest_k(allscores, k), [len(s) for s, _ in scored]))
    new = {name: mask.clone() for name, mask in masks.items()}
    for group, pruned in zip(groups, chosen):
        if not pruned.any():
            continue
        for member in group:
            index = member.index[pruned.to(member.index.device)].reshape(-1)
            target = new[member.param]
            target.movedim(member.dim, 0)[index.to(target.device)] = False
    return new


class GroupCriterion:
    """:func:`group_magnitude` with its groups bound, for ``Occam(criterion=...)``.

    Made by :func:`occamgd.compaction.structured_pruning`, which also keeps here what
    :func:`occamgd.compact` needs to compact the model later without being told again
    (``example_input``, ``exclude``).
    """

    def __init__(self, groups: Sequence[Sequence[Coupled]], scope: str = "layer", **context):
        if scope not in ("layer", "global"):
            raise InvalidValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.groups = [list(g) for g in groups]
        self.scope = scope
        self.context = context
        self.__name__ = f"group_{scope}"

    def __call__(self, weights, masks, rate):
        return group_magnitude(weights, masks, rate, self.groups, self.scope)

    def __repr__(self) -> str:
        return f"GroupCriterion(groups={len(self.groups)}, scope={self.scope!r})"


# N:M -----------------------------------------------------------------------------------------
def _check_nm(n: int, m: int) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) or not 1 <= n < m:
        raise InvalidValueError(f"N:M needs integers 1 <= n < m, got n={n!r}, m={m!r}; accepted: for example n=2, m=4")


def nm_magnitude(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    n: int = 2,
    m: int = 4,
) -> dict[str, torch.Tensor]:
    """N:M sparsity (2:4 by default): at most ``n`` kept weights in every group of ``m``.

    Groups are ``m`` consecutive weights along the input dimension: the rows of
    ``weight.reshape(out, -1)`` (a Linear's ``in_features``; a Conv's input channels and kernel
    in memory order), the layout ``torch.sparse.to_sparse_semi_structured`` takes for a Linear
    weight. Each row's length must be a multiple of ``m``.

    Semantics under a schedule, whose rate cannot adapt group by group: each step prunes
    ``prune_count(kept, rate)`` of a tensor's kept weights, smallest magnitude first, as the
    layerwise criterion does, but only among the weights outside their group's ``n`` largest
    kept ones. The N:M pattern is therefore always inside the mask; density falls as the
    schedule says until every group holds at most ``n`` kept weights, which is exactly N:M
    (density n/m from dense), and later steps prune nothing. From dense masks one step at a
    rate >= 1 - n/m gives the N:M pattern at once (one-shot, before fine-tuning); under the
    paper's schedule (0.4, 0.4, ...) 2:4 is reached after the second step.
    """
    _check_rate(rate)
    _check_nm(n, m)
    new = {}
    for name, weight in weights.items():
        mask = masks[name]
        if weight.dim() < 2 or math.prod(weight.shape[1:]) % m:
            raise InvalidValueError(
                f"N:M groups run along the input dimension, but {name!r} has shape {tuple(weight.shape)}; "
                f"accepted: weights with at least 2 dimensions whose rows hold a multiple of m={m} entries"
            )
        keep = mask.reshape(-1, m)
        magnitude = weight.detach().abs().reshape(-1, m)
        # A stable descending sort puts the larger magnitude first, the lower index among equals.
        order = torch.sort(magnitude.masked_fill(~keep, -math.inf), dim=1, descending=True, stable=True).indices
        protected = torch.zeros_like(keep).scatter_(1, order[:, :n], True) & keep
        candidates = (keep & ~protected).flatten()
        k = min(prune_count(int(keep.sum()), rate), int(candidates.sum()))
        pruned = smallest_k(magnitude.flatten().masked_fill(~candidates, math.inf), k)
        new[name] = mask & ~pruned.view_as(mask)
    return new


def nm_criterion(n: int, m: int) -> Criterion:
    """:func:`nm_magnitude` with another ``n``:``m`` bound, for ``Occam(criterion=...)``."""
    _check_nm(n, m)

    def nm(weights, masks, rate):
        return nm_magnitude(weights, masks, rate, n, m)

    nm.__name__ = f"nm_{n}_{m}"
    return nm


def is_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive input weights holds at most ``n`` nonzeros."""
    _check_nm(n, m)
    if weight.dim() < 2 or math.prod(weight.shape[1:]) % m:
        return False
    return bool(((weight.detach().reshape(-1, m) != 0).sum(1) <= n).all())


CRITERIA: dict[str, Criterion] = {
    "layerwise": layerwise_magnitude,
    "global": global_magnitude,
    "structured": structured_rows,
    "nm": nm_magnitude,
}


def get_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion by registry name, or the callable itself."""
    if callable(criterion):
        return criterion
    try:
        return CRITERIA[criterion]
    except KeyError:
        raise InvalidValueError(
            f"unknown criterion {criterion!r}; accepted: {sorted(CRITERIA)} or a callable "
            "(weights, masks, rate) -> masks"
        ) from None

"""The graph of a traced model: spaces of units, how they are coupled, and why some cannot go.

A **space** is a set of units that live along one feature dimension (a Linear's outputs, a
Conv's channels, an attention's heads); spaces that element-wise ops tie together are unified
(union-find) into one **group**, whose units must be removed together. Each space records its
**members** (which entries of which weights each unit owns), and why it may be **blocked** (its
width is the model's interface, or its units are normalised together) or **unfollowable** (an op
reads it in a way compaction cannot follow). :mod:`occamgd.compaction.tracing` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


# Data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seg:
    """``size(space)`` units side by side along a feature dimension, each ``inner`` consecutive entries."""

    space: int
    inner: int = 1


@dataclass(frozen=True)
class Feature:
    """Where a tensor's units lie: dimension ``dim`` is the concatenation of ``segs``."""

    dim: int
    segs: tuple[Seg, ...]


@dataclass
class Member:
    """One weight's share of a space: unit ``u`` owns ``index[u]`` along dimension ``dim`` of ``param``.

    ``role``: ``"out"`` (its rows make the unit: when all of them are pruned the unit outputs a
    constant), ``"in"`` (it reads the unit: when all of them are pruned nobody does), ``"aux"``
    (scored and pruned with the unit, needed for neither, such as an attention head's query and key rows),
    ``"zero"`` (pruned with the unit, not scored: its biases, its batch-norm scale and shift, so that a
    pruned unit outputs zero in training too, and stays exactly removable before zero padding).
    """

    param: str
    dim: int
    index: torch.Tensor
    role: str
    module: str


@dataclass
class Call:
    """One call of a layer that has a handler, with the features of its input and output."""

    name: str
    module: nn.Module
    handler: Any
    in_feat: Feature | None = None
    out_feat: Feature | None = None
    #: Handler-owned spaces inside the layer (an attention's heads), by role name.
    inner: dict[str, int] = field(default_factory=dict)


class Graph:
    """Spaces of units (union-find), their members, and why a space's units cannot be removed."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sizes: list[int] = []
        #: Channels per unit of each space: 1, or a GroupNorm's group size (whole groups go together).
        self.per_unit: list[int] = []
        self.parent: list[int] = []
        self.origin: list[str] = []
        self.members: dict[int, list[Member]] = {}
        self.blocked: dict[int, list[str]] = {}
        self.unfollowable: dict[int, list[str]] = {}
        self.calls: list[Call] = []
        self.calls_by_module: dict[int, Call] = {}
        #: Spaces split apart into consecutive parts (by split / chunk), by root.
        self.parts: dict[int, list[int]] = {}
        #: Spaces whose every unit may go (a handler's that copes with zero width, such as the GPT's heads).
        self.can_empty: set[int] = set()
        self.param_names: dict[int, str] = {}
        for n, p in model.named_parameters():  # a tied tensor by its first name, as Occam's masks name it
            self.param_names.setdefault(id(p), n)

    # Spaces -----------------------------------------------------------------------------------
    def new(self, size: int, origin: str, blocked: str | None = None) -> int:
        self.sizes.append(int(size))
        self.per_unit.append(1)
        self.parent.append(len(self.parent))
        self.origin.append(origin)
        sid = len(self.sizes) - 1
        self.members[sid], self.blocked[sid], self.unfollowable[sid] = [], [], []
        if blocked:
            self.blocked[sid].append(blocked)
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if a in self.parts or b in self.parts:  # split spaces: unify part by part
            fa, fb = Feature(0, (Seg(a),)), Feature(0, (Seg(b),))
            if not self._match(fa, fb):
                why = "unified with units that were split apart differently"
                self.block(fa, why, unfollowable=True)
                self.block(fb, why, unfollowable=True)
            return
        if a > b:
            a, b = b, a  # the older space (nearer the input) names the group
        self.parent[b] = a
        self.coarsen(a, self.per_unit[b], "coupled to channels that are grouped differently")
        for table in (self.members, self.blocked, self.unfollowable):
            table[a].extend(table.pop(b))
        if a in self.can_empty and b not in self.can_empty:
            self.can_empty.discard(a)
        self.can_empty.discard(b)

    def coarsen(self, sid: int, channels: int, why: str) -> bool:
        """Make units of ``channels`` consecutive channels (a GroupNorm's groups); False if they do not divide."""
        sid = self.find(sid)
        block = math.lcm(self.per_unit[sid], channels)
        if self.sizes[sid] % block:
            if why:
                self.blocked[sid].append(why)
            return False
        self.per_unit[sid] = block
        return True

    def units(self, sid: int) -> int:
        """How many units a space holds (channels over channels per unit)."""
        sid = self.find(sid)
        return self.sizes[sid] // self.per_unit[sid]

    def unit_index(self, member: Member, sid: int) -> torch.Tensor:
        """``member.index`` per unit: a unit of several channels owns all their entries."""
        return member.index.reshape(self.units(sid), -1)

    def size(self, sid: int) -> int:
        return self.sizes[self.find(sid)]

    def fixed(self, size: int, why: str) -> Feature:
        """A feature whose units may not change (model inputs, embeddings, constants)."""
        return Feature(0, (Seg(self.new(size, why, blocked=why)),))

    def spaces_of(self, feat: Feature | None) -> list[int]:
        return [] if feat is None else [self.find(s.space) for s in feat.segs]

    def block(self, feat: Feature | None, why: str, unfollowable: bool = False) -> None:
        table = self.unfollowable if unfollowable else self.blocked
        for sid in self.spaces_of(feat):
            if why not in table[sid]:
                table[sid].append(why)

    def width(self, feat: Feature) -> int:
        return sum(self.size(s.space) * s.inner for s in feat.segs)

    def layout(self, feat: Feature) -> list[tuple[int, int, int, int]]:
        """``(space, offset, inner, units)`` of each segment, offsets along the feature dimension (a
        space split apart by ``split`` / ``chunk`` counts as its parts, in order)."""
        out, offset = [], 0

        def emit(sid, inner):
            nonlocal offset
            sid = self.find(sid)
            if sid in self.parts:
                for part in self.parts[sid]:
                    emit(part, inner)
                return
            n = self.sizes[sid]
            out.append((sid, offset, inner, n))
            offset += n * inner

        for seg in feat.segs:
            emit(seg.space, seg.inner)
        return out

    def split_space(self, sid: int, sizes: list[int]) -> None:
        """Split a space into consecutive parts of ``sizes`` units (a fused projection's output
        chunked apart): each part keeps its units' members and reasons."""
        sid = self.find(sid)
        parts, start = [], 0
        for n in sizes:
            part = self.new(n, self.origin[sid])
            for m in self.members[sid]:
                self.members[part].append(Member(m.param, m.dim, m.index[start:start + n], m.role, m.module))
            self.blocked[part] = list(self.blocked[sid])
            self.unfollowable[part] = list(self.unfollowable[sid])
            parts.append(part)
            start += n
        self.members[sid] = []
        self.parts[sid] = parts

    def refine(self, feat: Feature, bounds: set[int]) -> None:
        """Split the spaces of ``feat`` so that every offset in ``bounds`` falls between units' spaces."""
        for sid, offset, inner, n in self.layout(feat):
            cuts = sorted(b for b in bounds if offset < b < offset + n * inner and (b - offset) % inner == 0)
            if cuts and self.per_unit[sid] == 1:
                edges = [0] + [(b - offset) // inner for b in cuts] + [n]
                self.split_space(sid, [e - s for s, e in zip(edges, edges[1:])])

    def _match(self, a: Feature, b: Feature) -> bool:
        """Unify two features part by part, splitting spaces to common boundaries; False if they cannot."""
        bounds = {o for _, o, _, _ in self.layout(a) + self.layout(b)}
        bounds |= {o + n * i for _, o, i, n in self.layout(a) + self.layout(b)}
        self.refine(a, bounds)
        self.refine(b, bounds)
        la, lb = self.layout(a), self.layout(b)
        if [(o, i, n) for _, o, i, n in la] != [(o, i, n) for _, o, i, n in lb]:
            return False
        for (sa, *_), (sb, *_) in zip(la, lb):
            self.union(sa, sb)
        return True

    # Members ----------------------------------------------------------------------------------
    def param_name(self, param: torch.Tensor) -> str:
        return self.param_names[id(param)]

    def add(self, sid: int, param: torch.Tensor, dim: int, index: torch.Tensor, role: str, module: str) -> None:
        self.members[self.find(sid)].append(Member(self.param_name(param), dim, index, role, module))

    def add_feature(self, feat: Feature, param: torch.Tensor, dim: int, role: str, module: str,
                    offset: int = 0) -> None:
        """Every unit of ``feat`` owns its block of entries of ``param`` along ``dim`` (from ``offset``)."""
        for sid, start, inner, n in self.layout(feat):
            index = offset + start + torch.arange(n).view(n, 1) * inner + torch.arange(inner).view(1, inner)
            self.add(sid, param, dim, index, role, module)

    def unify(self, a: Feature, b: Feature, why: str) -> Feature:
        """The two features share unit indices (element-wise): unify their spaces segment by segment."""
        if not self._match(a, b):
            self.block(a, why, unfollowable=True)
            self.block(b, why, unfollowable=True)
        return a

    # Results ----------------------------------------------------------------------------------
    def groups(self) -> list[int]:
        """The spaces whose units can be removed: weights own them, nothing blocks them, at least two units."""
        roots = sorted({self.find(s) for s in range(len(self.sizes))})
        # An entry of a tensor owned by two spaces (weights tied between layers) cannot follow both.
        owners: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
        for r in roots:
            for m in self.members[r]:
                owners.setdefault((m.param, m.dim), []).append((r, m.index.reshape(-1)))
        for (param, dim), entries in owners.items():
            if len({r for r, _ in entries}) < 2:
                continue
            index = torch.cat([i for _, i in entries])
            label = torch.cat([torch.full_like(i, r) for r, i in entries])
            order = torch.argsort(index, stable=True)
            index, label = index[order], label[order]
            clash = (index[1:] == index[:-1]) & (label[1:] != label[:-1])
            for r in set(label[1:][clash].tolist()) | set(label[:-1][clash].tolist()):
                why = f"{param!r} is cut along dimension {dim} by more than one group (tied weights)"
                if why not in self.blocked[r]:
                    self.blocked[r].append(why)
        return [r for r in roots if self.members[r] and any(m.role == "out" for m in self.members[r])
                and not self.blocked[r] and not self.unfollowable[r] and self.units(r) >= 2]

    def producers(self, sid: int) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members[self.find(sid)] if m.role == "out"))

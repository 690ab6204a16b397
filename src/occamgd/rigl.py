"""RigL: dynamic sparse training at a fixed density (Evci et al. 2020, "Rigging the Lottery").

The network is sparse from the first step: random masks at ``density`` (the same density in every
tensor, or Erdős–Rényi-Kernel), and the density never changes. Every ``update_every`` optimizer
steps, until ``end`` of the run, each tensor drops its ``k`` smallest-magnitude active weights and
grows ``k`` connections where the dense gradient of the current minibatch is largest, with

    k = alpha / 2 * (1 + cos(pi * step / (end * total_steps))) * n_active,

the paper's cosine decay of the update fraction. Grown weights start at zero, with their optimizer
state (momentum, Adam's moments) zeroed; the masks are re-applied after every optimizer step, as
:class:`occamgd.Occam` does.

>>> rigl = RigL(model, optimizer, density=0.2, total_steps=epochs * len(loader))
>>> for epoch in range(epochs):
...     train_one_epoch(model, optimizer, loader)  # the user's own loop, unchanged

How the updates read what they need, without a change to the loop:

- The gradient is read in an optimizer step *pre*-hook: it is dense (a masked weight is an
  ordinary zero entry of a plain ``Parameter``, so its gradient is computed like any other), and
  it is the minibatch's gradient as the optimizer sees it (after any clipping the loop does).
- The update itself runs in the step's *post*-hook, on the weights after that step, as in the
  paper's implementation: drop by ``|w|`` among the active weights, grow by ``|grad|`` among all
  the others (a connection dropped in this update may be grown again in it, Algorithm 1 of the
  paper; it then simply stays, with its weight). Only connections that were inactive start at
  zero with zeroed optimizer state; the state of every inactive weight is zeroed too.

Like Occam's masks these live beside the model (:class:`occamgd.masks.Masks`): the module is not
re-parametrised and its ``state_dict`` keeps its keys. Only optimizers that update each entry on
its own (SGD, Adam, AdamW, ...) keep the inactive weights' gradients out of the active ones; that
is every ``torch.optim`` optimizer but those with coupled updates (LAMB-style trust ratios).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from .errors import InvalidTypeError, InvalidValueError
from .masks import Masks, Selection, select_prunable

#: How the density is spread over the tensors: the same in each, or Erdős–Rényi-Kernel.
DISTRIBUTIONS = ("uniform", "erk")
#: Version of :meth:`RigL.state_dict`.
STATE_FORMAT = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def update_interval(total_steps: int, end: float = 0.75, updates: int = 20, most: int = 100) -> int:
    """An ``update_every`` for a run of ``total_steps``: the paper's 100 steps, or fewer so that at
    least ``updates`` connectivity updates happen before ``end`` of the run (short runs)."""
    if not (_is_int(total_steps) and total_steps >= 1):
        raise InvalidValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if not (_is_int(updates) and updates >= 1) or not (_is_int(most) and most >= 1):
        raise InvalidValueError(f"updates and most must be integers >= 1, got updates={updates!r}, most={most!r}")
    return max(1, min(most, int(end * total_steps) // updates))


def erk_densities(shapes: Mapping[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-tensor densities of the Erdős–Rényi-Kernel distribution at overall ``density``.

    A tensor's density is proportional to ``sum(shape) / prod(shape)`` (for a convolution kernel
    ``(n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w)``): small tensors are denser. Where
    that would exceed 1 the tensor is made dense and the rest rescaled, until every density is at
    most 1; the kept weights then add up to ``density`` of all the weights.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [name for name in sizes if name not in dense]
        raw = {name: sum(shapes[name]) / sizes[name] for name in free}
        budget = density * total - sum(sizes[name] for name in dense)
        divisor = sum(raw[name] * sizes[name] for name in free)
        if not free or budget <= 0:
            # Every tensor dense (density 1), or the dense ones already hold the budget.
            return {name: (1.0 if name in dense else 0.0) for name in sizes}
        eps = budget / divisor
        over = [name for name in free if eps * raw[name] > 1.0]
        if not over:
            return {name: 1.0 if name in dense else eps * raw[name] for name in sizes}
        largest = max(raw[name] for name in over)
        dense.update(name for name in over if raw[name] == largest)


class RigL:
    """Dynamic sparse training (RigL) of ``model`` by ``optimizer`` at a fixed ``density``.

    - ``density``: the kept fraction of the prunable weights, in (0, 1]; constant for the whole run.
    - ``total_steps``: optimizer steps in the run (the cosine decay and ``end`` are fractions of it).
    - ``update_every``: optimizer steps between connectivity updates (the paper's ΔT = 100; see
      :func:`update_interval` for short runs).
    - ``alpha``: the fraction of each tensor's active weights replaced at the first update, in
      [0, 1] (the paper's 0.3; 0 trains a static random sparse network).
    - ``end``: fraction of ``total_steps`` after which the masks stay fixed, in (0, 1] (the paper's 0.75).
    - ``distribution``: ``"uniform"`` (every tensor at ``density``) or ``"erk"`` (Erdős–Rényi-Kernel,
      :func:`erk_densities`: small tensors denser, the overall density the same).
    - ``include`` / ``exclude``: the prunable tensors, chosen as Occam chooses them
      (:func:`occamgd.masks.select_prunable`).
    - ``seed``: seeds the random initial masks (its own generator); ``None`` draws them from
      torch's global generator.

    Each tensor keeps at least one weight. The hooks stay on ``optimizer`` until :meth:`detach`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, density: float, total_steps: int, *,
                 update_every: int = 100, alpha: float = 0.3, end: float = 0.75, distribution: str = "uniform",
                 include: Selection | None = None, exclude: Selection | None = None, seed: int | None = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidTypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not (_is_real(density) and 0.0 < density <= 1.0):
            raise InvalidValueError(f"density must be a number in (0, 1] (the kept fraction), got {density!r}")
        if not (_is_int(total_steps) and total_steps >= 1):
            raise InvalidValueError(f"total_steps must be an integer >= 1 (optimizer steps in the run), "
                                    f"got {total_steps!r}")
        if not (_is_int(update_every) and update_every >= 1):
            raise InvalidValueError(f"update_every must be an integer >= 1 (optimizer steps), got {update_every!r}")
        if not (_is_real(alpha) and 0.0 <= alpha <= 1.0):
            raise InvalidValueError(f"alpha must be a fraction in [0, 1] (the paper's 0.3), got {alpha!r}")
        if not (_is_real(end) and 0.0 < end <= 1.0):
            raise InvalidValueError(f"end must be a fraction of the run in (0, 1] (the paper's 0.75), got {end!r}")
        if distribution not in DISTRIBUTIONS:
            raise InvalidValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if seed is not None and not _is_int(seed):
            raise InvalidValueError(f"seed must be an integer or None, got {seed!r}")
        params = select_prunable(model, include, exclude)
        sharded = [name for name, p in params.items() if type(p.data).__name__ == "DTensor"]
        if sharded:
            raise InvalidValueError(f"RigL does not support sharded (DTensor) parameters, found {sharded[:3]}; "
                                    "accepted: a model whose prunable tensors are plain tensors on one device")
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        untrained = [name for name, p in params.items() if id(p) not in trained]
        if untrained:
            raise InvalidValueError(f"the optimizer does not update the prunable tensors {untrained[:4]}; accepted: "
                                    "an optimizer over every tensor RigL masks (or exclude= those tensors)")
        self.model = model
        self.optimizer = optimizer
        self.density_target = float(density)
        self.total_steps = int(total_steps)
        self.update_every = int(update_every)
        self.alpha = float(alpha)
        self.end = float(end)
        self.distribution = distribution
        self.seed = seed
        #: Optimizer steps taken since the start (restored by :meth:`load_state_dict`).
        self.step_count = 0
        #: One entry per connectivity update: its step, fraction, and per tensor the weights
        #: dropped and grown (``k``) and the connections that were new (``new``, started at zero).
        self.history: list[dict[str, Any]] = []
        self.masks = Masks(params)
        self._grads: dict[str, torch.Tensor] | None = None
        self.masks.update(self._random_masks())
        self.masks.apply_to_optimizer_state(optimizer)
        self._handles = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._before_step()),
                         optimizer.register_step_post_hook(lambda opt, args, kwargs: self._after_step())]

    # Reading -----------------------------------------------------------------------------
    @property
    def density(self) -> float:
        """Kept fraction of the prunable weights (constant through the run)."""
        return self.masks.density

    def densities(self) -> dict[str, float]:
        """Kept fraction of each prunable tensor."""
        return self.masks.densities()

    def drop_fraction(self, step: int) -> float:
        """Fraction of each tensor's active weights replaced by an update after optimizer step ``step``:
        ``alpha / 2 * (1 + cos(pi * step / (end * total_steps)))`` before ``end``, 0 from then on."""
        horizon = self.end * self.total_steps
        if step >= horizon:
            return 0.0
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / horizon))

    def updates_at(self, step: int) -> bool:
        """Whether the connectivity is updated after optimizer step ``step`` (counted from 1)."""
        return step % self.update_every == 0 and step < self.end * self.total_steps

    # Initial masks -----------------------------------------------------------------------
    def _counts(self) -> dict[str, int]:
        """How many weights each tensor keeps (at least one)."""
        shapes = {name: tuple(p.shape) for name, p in self.masks.params.items()}
        if self.distribution == "erk":
            fractions = erk_densities(shapes, self.density_target)
        else:
            fractions = {name: self.density_target for name in shapes}
        return {name: min(math.prod(shape), max(1, round(fractions[name] * math.prod(shape))))
                for name, shape in shapes.items()}

    def _random_masks(self) -> dict[str, torch.Tensor]:
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        masks = {}
        for name, count in self._counts().items():
            param = self.masks.params[name]
            chosen = torch.randperm(param.numel(), generator=generator)[:count]
            flat = torch.zeros(param.numel(), dtype=torch.bool)
            flat[chosen] = True
            masks[name] = flat.view(param.shape)
        return masks

    # The hooks ---------------------------------------------------------------------------
    @torch.no_grad()
    def _before_step(self) -> None:
        if not self.updates_at(self.step_count + 1):
            return
        grads = {}
        for name, param in self.masks.params.items():
            if param.grad is not None:
                grad = param.grad.to_dense() if param.grad.is_sparse else param.grad
                grads[name] = grad.detach().abs().float()
        self._grads = grads

    @torch.no_grad()
    def _after_step(self) -> None:
        self.step_count += 1
        self.masks.apply()
        if self._grads is not None:
            grads, self._grads = self._grads, None
            if self.updates_at(self.step_count):
                self._update(grads)

    @torch.no_grad()
    def _update(self, grads: Mapping[str, torch.Tensor]) -> None:
        fraction = self.drop_fraction(self.step_count)
        new_masks, new_connections, counts = {}, {}, {}
        for name, param in self.masks.params.items():
            mask = self.masks[name].flatten()
            n_active = int(mask.sum())
            k = int(fraction * n_active)
            if k == 0 or name not in grads:
                continue
            # Drop: keep the n_active - k largest |w| among the active weights (inactive ones rank lowest).
            drop_score = torch.where(mask, param.detach().flatten().abs().float(), -1.0)
            kept = torch.zeros_like(mask)
            kept[torch.topk(drop_score, n_active - k, sorted=False).indices] = True
            # Grow: the k largest |grad| among every connection not kept (just-dropped ones included).
            grow_score = torch.where(kept, -1.0, grads[name].flatten())
            grown = torch.zeros_like(mask)
            grown[torch.topk(grow_score, k, sorted=False).indices] = True
            new_masks[name] = (kept | grown).view(param.shape)
            new_connections[name] = (grown & ~mask).view(param.shape)
            counts[name] = {"k": k, "new": int(new_connections[name].sum())}
        if new_masks:
            for name, new in new_connections.items():
                param = self.masks.params[name]
                param.detach().masked_fill_(new, 0)
                for value in self.optimizer.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.masked_fill_(new, 0)
            self.masks.update(new_masks)
            self.masks.apply_to_optimizer_state(self.optimizer)
        self.history.append({"step": self.step_count, "fraction": fraction, "tensors": counts})

    def detach(self) -> None:
        """Remove the optimizer hooks: the masks stop being enforced and updated."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # Checkpointing -----------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"density": self.density_target, "total_steps": self.total_steps, "update_every": self.update_every,
                "alpha": self.alpha, "end": self.end, "distribution": self.distribution}

    def state_dict(self) -> dict[str, Any]:
        """The masks, the step count, the update history and the settings they belong to."""
        return {"format": STATE_FORMAT, "settings": self._settings(), "step_count": self.step_count,
                "masks": self.masks.state_dict(), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: its masks (pruned weights and their optimizer state are
        zeroed) and step count; refused when it was written with other settings.

        Building a RigL masks the weights with fresh random masks: to resume, build it, then load
        the model's and the optimizer's states, then this one."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise InvalidValueError(f"RigL state has format {found!r}; accepted: {STATE_FORMAT}, a dict from "
                                    "RigL.state_dict()")
        missing = sorted({"settings", "step_count", "masks"} - set(state))
        if missing:
            raise InvalidValueError(f"RigL state lacks {missing}; accepted: a dict from RigL.state_dict()")
        ours = self._settings()
        for key, value in ours.items():
            if state["settings"].get(key) != value:
                raise InvalidValueError(f"RigL state was written with {key}={state['settings'].get(key)!r}, this RigL "
                                        f"has {key}={value!r}; accepted: a state of a RigL with the same settings")
        step = state["step_count"]
        if not (_is_int(step) and step >= 0):
            raise InvalidValueError(f"RigL state has step_count={step!r}; accepted: an integer >= 0")
        self.masks.load_state_dict(state["masks"])
        self.masks.apply_to_optimizer_state(self.optimizer)
        self.step_count = int(step)
        self.history = [dict(r) for r in state.get("history", [])]
        self._grads = None

    def __repr__(self) -> str:
        return (f"RigL(density={self.density_target!r}, total_steps={self.total_steps}, "
                f"update_every={self.update_every}, alpha={self.alpha!r}, end={self.end!r}, "
                f"distribution={self.distribution!r})")

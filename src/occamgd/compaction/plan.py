"""``structured_pruning``: which weights to prune and how, so that :func:`compact` can remove the units.

It traces the model on an example input (:mod:`occamgd.compaction.tracing`), takes the groups of
coupled units that can be removed, and refuses, before anything trains, what it cannot handle:
an op or module that reads units in a way compaction cannot follow (named with its module path),
and any graph on which a trial compaction of a copy fails or changes the outputs (a size written
as a literal in a ``view``, say).
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..criteria import Coupled, GroupCriterion
from ..errors import InvalidTypeError, InvalidValueError
from .cut import compact, default_example, exclude_names, on_device, unwrap
from .graph import Graph
from .handlers import handler_for
from .tracing import example_args, trace

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


def main_output(output: Any) -> torch.Tensor | None:
    """The model's main output: the tensor itself, the first of a tuple, a ModelOutput's ``logits``."""
    while True:
        if torch.is_tensor(output) or output is None:
            return output
        if isinstance(output, Mapping):
            output = output.get("logits", next(iter(output.values()), None))
        elif isinstance(output, (tuple, list)):
            output = output[0] if output else None
        else:
            return None


def _where(error: BaseException) -> str:
    """The user's line that raised ``error`` (the deepest frame outside torch and occamgd)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith((_HERE, _TORCH))]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} ({(f.line or '').strip()})"


def _probe_masks(model: nn.Module, groups: list[list[Coupled]], which: list[int]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    masks = {m.param: torch.ones_like(params[m.param], dtype=torch.bool) for g in groups for m in g}
    for i in which:
        for m in groups[i]:
            masks[m.param].movedim(m.dim, 0)[m.index[0].to(masks[m.param].device)] = False
    return masks


def _trial(model: nn.Module, example: Any, groups, which, exclude) -> None:
    """Compact a copy with unit 0 of each group in ``which`` pruned; raise when that fails or changes outputs."""
    masks = _probe_masks(model, groups, which)
    masked = compact(model, {}, example, exclude=exclude)  # a plain copy, traced the same way
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    small = compact(masked, masks, example, exclude=exclude)
    args, kwargs = example_args(example)
    masked.eval()
    small.eval()
    with torch.no_grad():
        expected, got = main_output(masked(*args, **kwargs)), main_output(small(*args, **kwargs))
    if expected is not None and (got is None or got.shape != expected.shape or not torch.allclose(
            got.float(), expected.float(), rtol=1e-4, atol=1e-4 * float(expected.float().abs().max()) + 1e-6)):
        raise AssertionError("the compacted copy's outputs differ from the masked model's")


def _refuse(model: nn.Module, graph: Graph, groups: list[int], error: BaseException, roots: list[int]) -> None:
    names = [p for r in roots for p in graph.producers(r)]
    raise InvalidValueError(
        f"a trial compaction of {type(model).__name__} on the example input failed after removing units of "
        f"{names[:6]}: {type(error).__name__}: {error}{_where(error)}. A shape written as a number (such as "
        "x.view(-1, 400)) cannot follow removed units: write it from the input (x.flatten(1), "
        f"x.view(x.size(0), -1)), or leave those layers whole with exclude={names[:6]!r}, or prune unstructured "
        "(criterion='layerwise')"
    ) from error


def structured_pruning(
    model: nn.Module,
    example_input: Any = None,
    *,
    scope: str = "layer",
    exclude: Any = None,
    strict: bool = True,
    check: bool = True,
) -> dict[str, Any]:
    """``include`` and ``criterion`` for ``Occam`` so that pruning removes whole groups of coupled
    units that :func:`compact` can cut: ``Occam(model, optimizer, **structured_pruning(model, x))``.

    ``example_input``: a batch ``model`` takes (a tensor, a tuple of positional inputs, or a dict of
    keyword inputs, such as a tokenizer's output); optional for a Sequential that starts with a
    Linear and for :class:`occamgd.models.GPT`. The model is traced on it once (in eval mode; its
    weights and buffers are not changed) and the groups found: the neurons of a Linear with the
    columns that read them, a Conv's channels with every layer the residual additions,
    concatenations, batch norms and depthwise convolutions tie them to, attention heads (query,
    key and value rows and output-projection columns together), transformer MLP units. The
    model's outputs (classes, vocabulary logits), embedding widths and whatever is normalised
    together (LayerNorm, RMSNorm) stay whole.

    The criterion (:class:`occamgd.criteria.GroupCriterion`) scores each unit by the L2 norm of
    all its coupled weights; the schedule's rate is the fraction of each group's remaining units
    pruned per step (``scope="global"``: of all groups' together, each group keeping one unit).

    Refused here, before anything trains (``InvalidValueError`` naming the op and module path):
    with ``strict=True``, an op or module that reads units in a way compaction cannot follow
    (pass ``exclude=[module names or types]`` to leave those layers whole, ``strict=False`` to
    leave every such group whole, or prune unstructured); with ``check=True``, a graph on which a
    trial compaction of a copy fails or changes the outputs.
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scope not in ("layer", "global"):
        raise InvalidValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    model = unwrap(model)  # names as Occam's masks name them
    example_input = on_device(default_example(model) if example_input is None else example_input, model)
    excluded = exclude_names(model, exclude)
    graph = trace(model, example_input, handler_for, excluded)
    if strict:
        stuck = [r for r in sorted({graph.find(s) for s in range(len(graph.sizes))})
                 if graph.unfollowable[r] and not graph.blocked[r] and graph.producers(r)]
        if stuck:
            lines = "; ".join(f"units of {graph.producers(r)}: {graph.unfollowable[r][0]}" for r in stuck[:4])
            names = [p for r in stuck for p in graph.producers(r)]
            raise InvalidValueError(
                f"structured pruning cannot follow {len(stuck)} group(s) of {type(model).__name__}: {lines}. "
                f"Accepted: exclude={names[:6]!r} (or the module holding the op) to leave them whole, strict=False "
                "to leave every such group whole, or unstructured pruning (criterion='layerwise')"
            )
    roots = graph.groups()
    if not roots:
        raise InvalidValueError(
            f"{type(model).__name__} has no group of units that compact can remove (a Linear or Conv whose outputs "
            "feed another layer, not the model's outputs nor a normalisation over them); accepted: a model with "
            "hidden layers, or unstructured pruning (criterion='layerwise')"
        )
    groups = [[Coupled(m.param, m.dim, graph.unit_index(m, r), m.role != "zero") for m in graph.members[r]]
              for r in roots]
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _trial(model, example_input, groups, list(range(len(groups))), excluded)
            except (InvalidValueError, InvalidTypeError):
                raise
            except Exception as error:  # noqa: BLE001 - whatever the user's forward raises is reported
                culprits = []
                for i in range(len(groups)):
                    try:
                        _trial(model, example_input, groups, [i], excluded)
                    except Exception:  # noqa: BLE001
                        culprits.append(roots[i])
                _refuse(model, graph, roots, error, culprits or roots)
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    include = sorted({m.param for g in groups for m in g}, key=order.__getitem__)
    from .shrink import SHRINKER  # what Occam(shrink=True) calls
    criterion = GroupCriterion(groups, scope, example_input=example_input, exclude=excluded,
                               names=[graph.producers(r) for r in roots], shrinker=SHRINKER)
    return {"include": include, "criterion": criterion}

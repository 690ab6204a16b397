"""The top-level package: every public name resolves, and optional frameworks load only on use."""

from __future__ import annotations

import subprocess
import sys

import occamgd


def test_every_public_name_resolves():
    for name in occamgd.__all__:
        assert getattr(occamgd, name) is not None, name


def test_importing_occamgd_loads_no_integration_framework():
    code = ("import sys, occamgd; print(sorted(m for m in ('transformers', 'lightning', 'accelerate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_attribute_is_an_attribute_error():
    try:
        occamgd.OccamMLP  # noqa: B018
    except AttributeError as exc:
        assert "OccamMLP" in str(exc)
    else:
        raise AssertionError("occamgd.OccamMLP should not exist")


def test_occamgd_compact_is_the_function_before_and_after_the_compaction_module_is_imported():
    # Once a module of the same name, ``occamgd.compact`` stopped being callable after the first import.
    code = (
        "import torch, occamgd\n"
        "first = occamgd.compact\n"
        "import occamgd.compaction\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))\n"
        "occam = occamgd.Occam(model, schedule=occamgd.Never(), **occamgd.compaction.structured_pruning(model))\n"
        "for _ in range(2):\n"
        "    assert occamgd.compact is first and callable(first), occamgd.compact\n"
        "    occamgd.compact(model, occam)\n"
        "assert occamgd.to_semi_structured is occamgd.compaction.to_semi_structured\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr

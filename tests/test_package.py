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

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


def _imports(path):
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.relative_to(SRC).with_suffix("").parts[: -node.level]
            names.add(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("occamgd"):
            names.add(node.module.removeprefix("occamgd").lstrip(".") or "")
    return names


SRC = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "occamgd"


def test_the_core_imports_nothing_from_the_periphery_and_product_code_nothing_from_the_bench():
    # Data flows one way: core -> product code (fit, model directory, export, integrations) -> bench, CLI.
    core = ["masks.py", "criteria.py", "schedules.py", "occam.py", "errors.py", "rigl.py"]
    periphery = ("bench", "data", "integrations", "cli", "modeldir", "fit", "export", "models", "compaction")
    for name in core:
        bad = {m for m in _imports(SRC / name) if m.split(".")[0] in periphery}
        assert not bad, f"{name} imports {bad}"
    product = [SRC / "fit.py", SRC / "modeldir.py", SRC / "export.py", *SRC.glob("integrations/*.py"),
               *SRC.glob("data/*.py"), *SRC.glob("models/*.py")]
    for path in product:
        bad = {m for m in _imports(path) if m.split(".")[0] == "bench"}
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_the_package_ships_its_type_marker_and_bundled_data():
    import tomllib
    from importlib.resources import files

    package = files("occamgd")
    assert package.joinpath("py.typed").is_file()
    assert package.joinpath("data", "tables", "manifest.json").is_file()
    assert package.joinpath("data", "corpora", "tinyshakespeare.txt").is_file()
    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    shipped = config["tool"]["setuptools"]["package-data"]["occamgd"]
    assert {"py.typed", "data/tables/*.csv", "data/tables/manifest.json", "data/corpora/*.txt"} <= set(shipped)

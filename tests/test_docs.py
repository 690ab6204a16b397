"""Every Python block of the README and of docs/ runs, in order, on small data: a snippet cannot rot.

Each page's blocks run in one namespace, in a temporary working directory, after a prelude that
defines what the page leaves to the reader (a model, its optimizer, a loader, a training epoch, a
validation loss) at toy sizes. A page with Python blocks and no prelude here runs without one.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_LOOP = '''
import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
X_train, y_train = torch.randn(96, 6), torch.randint(0, 3, (96,))
X_test, y_test = torch.randn(48, 6), torch.randint(0, 3, (48,))
dataset = torch.utils.data.TensorDataset(X_train, y_train)
net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
model = net
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
train_loader = loader
val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X_test, y_test), batch_size=16)
epochs = 3
x_batch = X_test

def train_one_epoch(model, optimizer, loader):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

@torch.no_grad()
def validation_loss(model):
    model.eval()
    loss = F.cross_entropy(model(X_test), y_test).item()
    model.train()
    return loss
'''

_HF = '''
import torch

torch.manual_seed(0)
_ids = torch.randint(0, 100, (24, 16))
train = [{"input_ids": row, "labels": row} for row in _ids[:16]]
val = [{"input_ids": row, "labels": row} for row in _ids[16:]]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PRELUDES = {
    "README.md": _LOOP,
    "performance.md": _LOOP,
    "distributed.md": _LOOP,
    "lightning.md": _LOOP.replace("shuffle=True", "shuffle=False"),
    "transformers.md": _HF,
}


def _sklearn_results(namespace: dict) -> None:
    assert namespace["model"].score(namespace["X_test"], namespace["y_test"]) > 0.8
    assert namespace["sizes"]["sparse"]["bytes"] < namespace["sizes"]["dense"]["bytes"]


#: What a page's example must have produced, where the page states it.
CHECKS = {"sklearn.md": _sklearn_results}


def _blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def test_every_page_with_python_is_covered():
    pages = [p.name for p in PAGES if _blocks(p)]
    assert {"README.md", "bench.md", "distributed.md", "lightning.md", "performance.md", "sklearn.md",
            "transformers.md"} <= set(pages)


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    if page.name == "distributed.md":  # what torchrun would set, for a world of one CPU process
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    # A page may register bench tasks and methods (docs/bench.md does): they go when the page is done.
    from occamgd.bench.registry import METHODS, TASKS

    added_before = {id(r): set(r) for r in (METHODS, TASKS)}
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    exec(compile(PRELUDES.get(page.name, ""), f"prelude of {page.name}", "exec"), namespace)
    try:
        for line, code in _blocks(page):
            exec(compile(code, f"{page.relative_to(ROOT)} (block at line {line})", "exec"), namespace)
        CHECKS.get(page.name, lambda namespace: None)(namespace)
    finally:
        for registry in (METHODS, TASKS):
            for key in set(registry) - added_before[id(registry)]:
                del registry[key]
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

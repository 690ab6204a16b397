"""A character-level GPT in one readable file (after Karpathy's nanoGPT).

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks of causal self-attention and a
4x GELU MLP, a final LayerNorm and a language-model head, optionally tied to the token
embedding. Module names follow nanoGPT (``transformer.wte``, ``transformer.h[i].attn.c_attn``,
``.mlp.c_fc``, ``lm_head``, ...) so that code written against nanoGPT finds the same tensors.

>>> model = GPT(GPTConfig(vocab_size=65))                  # the standard 6/6/384, context 256
>>> logits, loss = model(idx, targets)                      # idx, targets: (batch, time) int64
>>> occam = occamgd.Occam(model, optimizer, include=prunable(model))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidTypeError, InvalidValueError


@dataclass
class GPTConfig:
    """Shape of a :class:`GPT`; the defaults are the standard Tiny Shakespeare model (~10.7 M weights)."""

    vocab_size: int
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = True
    tie_weights: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidValueError(f"GPTConfig.{name} must be an integer >= 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise InvalidValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}); "
                f"accepted: for example n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise InvalidValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; each position sees itself and the positions before it.

    ``n_head`` heads of ``head_dim`` (``n_embd // n_head``) features each. The forward reads both
    from the module, not from ``n_embd``: :func:`occamgd.compact` removes pruned heads by
    lowering ``n_head`` (to 0 when every head goes) and keeps ``head_dim``, and so each head's
    attention scale.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.head_dim = config.n_embd // config.n_head
        # Query, key and value of all heads in one matrix; rows [h*d:(h+1)*d] of each third are head h.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.n_head * self.head_dim
        if inner == 0:  # every head removed by compaction: only c_proj's bias is left
            y = x.new_zeros(B, T, 0)
        else:
            q, k, v = self.c_attn(x).split(inner, dim=2)
            q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
            y = y.transpose(1, 2).contiguous().view(B, T, inner)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: ``n_embd -> 4 n_embd -> GELU -> n_embd``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model; see :class:`GPTConfig` for its shape."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise InvalidTypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaling: the projections that add into the residual stream start smaller, so the
        # stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied head counted once); ``non_embedding`` leaves out the
        position embedding, as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay on matrices and embeddings (2-D), none on biases and norms."""
        params = list(self.parameters())
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """``(logits, loss)``: logits ``(B, T, vocab)``; loss is the mean cross-entropy against
        ``targets`` (entries ``-1`` ignored), or ``None`` without targets."""
        if idx.dim() != 2:
            raise InvalidValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.config.block_size:
            raise InvalidValueError(
                f"sequence length {T} exceeds the model's context (block_size={self.config.block_size}); "
                f"accepted: at most {self.config.block_size} tokens per row"
            )
        if targets is not None and targets.shape != idx.shape:
            raise InvalidValueError(f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + new)``.

        Runs in eval mode (no dropout) and restores the module's mode afterwards. Only the last
        ``block_size`` tokens condition each step. ``top_k`` keeps the k likeliest tokens;
        ``generator`` (on the model's device) makes sampling reproducible.
        """
        if idx.dim() != 2 or idx.size(1) < 1:
            raise InvalidValueError(f"idx must have shape (batch, time) with time >= 1, got {tuple(idx.shape)}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
            raise InvalidValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise InvalidValueError(f"temperature must be a number > 0, got {temperature!r}")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
            raise InvalidValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size:])
                logits = logits[:, -1, :] / temperature
                if top_k is not None and top_k < logits.size(-1):
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = F.softmax(logits.float(), dim=-1)
                idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        finally:
            self.train(was_training)
        return idx


#: The weights of each block that ``prunable`` selects by default.
BLOCK_WEIGHTS = (
    "transformer.h.*.attn.c_attn.weight",
    "transformer.h.*.attn.c_proj.weight",
    "transformer.h.*.mlp.c_fc.weight",
    "transformer.h.*.mlp.c_proj.weight",
)


def prunable(model: GPT, embeddings: bool = False, head: bool = False) -> list[str]:
    """The ``include=`` selection for :class:`occamgd.Occam` on a :class:`GPT`.

    By default only the attention and MLP projection weights of every block (``c_attn``,
    ``c_proj``, ``c_fc``): nearly all the weights (98.6 % of the standard model). The embeddings
    (``embeddings=True``: ``wte`` and ``wpe``) and the head (``head=True``) are a small share, but
    every prediction passes through them: pruning them saves little and touches every output. The
    anchor runs (docs/anchors.md) kept the embeddings dense; pruning them is an explicit
    choice. Biases and LayerNorms are never pruned.

    With ``tie_weights`` the head *is* the token embedding (one tensor, named
    ``transformer.wte.weight``): then pass ``embeddings`` and ``head`` equal, since pruning one
    prunes the other.
    """
    if not isinstance(model, GPT):
        raise InvalidTypeError(f"prunable expects an occamgd.models.GPT, got {type(model).__name__}; for "
                        "other models pass your own include= selection to occamgd.Occam")
    if model.config.tie_weights and embeddings != head:
        raise InvalidValueError(
            f"embeddings={embeddings!r} and head={head!r} disagree, but this GPT ties its head to the "
            "token embedding (one tensor); accepted: both True or both False, or a GPT built with "
            "tie_weights=False"
        )
    include = list(BLOCK_WEIGHTS)
    if embeddings:
        include += ["transformer.wte.weight", "transformer.wpe.weight"]
    if head and not model.config.tie_weights:
        include.append("lm_head.weight")
    return include


def _register_compaction() -> None:
    """Tell :mod:`occamgd.compaction` how to cut this GPT's heads and what input it takes."""
    from ..compaction.handlers import HeadsHandler, register_example, register_handler

    register_handler(CausalSelfAttention, HeadsHandler("c_attn", out="c_proj", heads="n_head", dim="head_dim",
                                                          allow_empty=True))
    register_example(GPT, lambda model: torch.zeros(1, min(8, model.config.block_size), dtype=torch.long,
                                                    device=model.lm_head.weight.device))


_register_compaction()

"""The Gato transformer: config, presets, model and KV cache, in one file (nanoGPT style).

A decoder-only, pre-norm transformer over one flat token stream (docs/method.md sections 1-3).
Text, discrete and continuous tokens share one embedding table (tied with the output layer);
image patches are embedded by a single ResNet v2 block plus row/column position embeddings;
observation tokens get a learned local position embedding. Shapes: B batch, T time, C width,
H heads, D head size, V vocabulary, Np image patches in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from opengato.kinds import Kind


@dataclass
class GatoConfig:
    """Shape and regularisation of a Gato model; written to config.json beside checkpoints."""

    vocab_size: int
    """Total number of token ids (`Tokenizer.vocab_size`); the size of the tied embedding."""
    n_layer: int = 8
    """Number of transformer blocks."""
    n_embd: int = 768
    """Model width C."""
    n_head: int = 24
    """Number of attention heads; head size is n_embd // n_head."""
    d_ff: int = 3072
    """Hidden size of the feed-forward network."""
    ffn: Literal["gelu", "geglu"] = "gelu"
    """Feed-forward kind. `gelu`: two matrices (C->d_ff->C). `geglu`: three matrices of hidden d_ff.
    Decision (docs/method.md section 3): the plain FFN is the default because its parameter counts
    sit closest to the paper's model names; the appendix's GEGLU is one flag away."""
    context_len: int = 1024
    """Tokens attended to (the paper's window); also the default KV-cache capacity."""
    dropout: float = 0.1
    """Dropout on the embeddings and on each residual branch (paper: 0.1)."""
    pos_encoding: Literal["rope", "none"] = "rope"
    """Positions inside the sequence. Decision: the paper is silent, so RoPE (relative, computed on
    the fly, so no table to overflow and a cropped KV cache keeps correct relative distances);
    `none` relies on the causal mask and the local observation positions alone."""
    rope_base: float = 10000.0
    """RoPE frequency base."""
    max_obs_pos: int = 512
    """Size of the local observation position table; a longer observation is an error."""
    position_vocab: int = 128
    """Quantisation of patch row/column intervals (entries in each of the row and column tables)."""
    patch_size: int = 16
    """Image patch side in pixels."""
    image_channels: int = 3
    """Channels of an image patch."""
    patch_channels: int = 32
    """Channels inside the patch ResNet block."""
    bias: bool = False
    """Biases in the linear layers (LayerNorm always has them). Off: a little faster, no worse."""
    name: str = "custom"
    """Preset this config came from (for printing and checkpoints)."""
    bin_ids: tuple[int, int] = (0, 0)
    """[start, stop) of the continuous-value bins among the token ids (set from the tokenizer);
    used only by `bin_init`."""
    bin_init: Literal["normal", "smooth"] = "normal"
    """Initial embeddings of the continuous-value bins. `normal`: N(0, 0.02) like every token.
    `smooth`: neighbouring bins start close together (random Fourier features of the bin index,
    an RBF kernel of `bin_init_scale` bins, same per-coordinate std 0.02), so the model does not
    have to learn from data alone that bin 500 lies between 499 and 501. Decision: the paper does
    not say how embeddings are initialised; this changes the initial values only."""
    bin_init_scale: float = 16.0
    """Length scale, in bins, of the `smooth` initialisation."""

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size")
        if self.ffn not in ("gelu", "geglu"):
            raise ValueError(f"ffn must be 'gelu' or 'geglu', got {self.ffn!r}")
        if self.bin_init not in ("normal", "smooth"):
            raise ValueError(f"bin_init must be 'normal' or 'smooth', got {self.bin_init!r}")
        self.bin_ids = tuple(self.bin_ids)
        if not 0 <= self.bin_ids[0] <= self.bin_ids[1] <= self.vocab_size:
            raise ValueError(
                f"bin_ids {self.bin_ids} is not a range of token ids < {self.vocab_size}"
            )
        if self.pos_encoding not in ("rope", "none"):
            raise ValueError(f"pos_encoding must be 'rope' or 'none', got {self.pos_encoding!r}")
        if self.patch_channels % _GN_GROUPS or self.patch_size % 2:
            raise ValueError(f"patch_channels must be a multiple of {_GN_GROUPS}, patch_size even")


_GN_GROUPS = 8  # GroupNorm groups in the patch ResNet block

# Table C.1 shapes exactly (the big three), plus small shapes that train on two CPU cores.
# Names of the small ones are their rough parameter count at a vocabulary of ~5k tokens.
PRESETS: dict[str, dict] = {
    "gato-tiny": dict(n_layer=2, n_embd=64, n_head=4, d_ff=256, patch_channels=8),
    "gato-1m": dict(n_layer=4, n_embd=96, n_head=4, d_ff=384, patch_channels=8),
    "gato-5m": dict(n_layer=4, n_embd=256, n_head=8, d_ff=1024, patch_channels=16),
    "gato-20m": dict(n_layer=5, n_embd=512, n_head=8, d_ff=2048, patch_channels=32),
    "gato-79m": dict(n_layer=8, n_embd=768, n_head=24, d_ff=3072),
    "gato-364m": dict(n_layer=12, n_embd=1536, n_head=12, d_ff=6144),
    "gato-1.18b": dict(n_layer=24, n_embd=2048, n_head=16, d_ff=8192),
}


def check_preset(preset: str) -> None:
    """Raise ValueError naming the presets when `preset` is not one of them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")


def make_config(preset: str, vocab_size: int, **overrides) -> GatoConfig:
    """The config of a named preset for a vocabulary, with any field overridden."""
    check_preset(preset)
    known = {f.name for f in fields(GatoConfig)}
    if unknown := set(overrides) - known:
        raise ValueError(f"unknown GatoConfig field(s) {sorted(unknown)}")
    return GatoConfig(**{"name": preset, **PRESETS[preset], "vocab_size": vocab_size, **overrides})


@dataclass
class GatoBatch:
    """The model's input (docs/design.md, "Model input contract")."""

    ids: Tensor
    """long (B, T) token ids; image tokens hold pad_id, their content is in `patches`."""
    kind: Tensor
    """long (B, T) `Kind` of each token."""
    obs_pos: Tensor
    """long (B, T) local observation position, -1 for non-observation tokens."""
    target_weight: Tensor | None
    """float (B, T) weight of each token as a next-token target, 0 where it is none (the
    paper: 1 for text data and actions, 0 elsewhere; `sequences.LossWeights`); None at inference."""
    patches: Tensor
    """float (Np, 3, 16, 16) normalised image patches in stream order (Np may be 0)."""
    patch_index: Tensor
    """long (Np,) flat index into B*T of each patch's token."""
    patch_pos: Tensor
    """long (Np, 4) (row_lo, row_hi, col_lo, col_hi), half-open intervals in [0, position_vocab]."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GatoBatch:
        """A copy of the batch on `device`."""
        moved = {}
        for f in fields(self):
            t = getattr(self, f.name)
            moved[f.name] = None if t is None else t.to(device, non_blocking=non_blocking)
        return GatoBatch(**moved)


def loss_mask(batch: GatoBatch) -> Tensor:
    """bool (B, T): True where ids[:, t] is a counted target (predicted from position t-1).

    Position 0 has no prediction; padding never counts, whatever `batch.target_weight` says."""
    mask = (batch.target_weight > 0) & (batch.kind != Kind.PAD)
    mask[:, 0] = False
    return mask


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding.

    Preallocated (n_layer, B, H, capacity, D) buffers, allocated on first use in the compute dtype
    (so it follows autocast); `length` entries are filled. `start` is the absolute position of
    entry 0: it grows when the cache is cropped, so RoPE positions keep increasing and relative
    distances between retained keys and new queries stay right.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.n_layer, self.capacity = n_layer, capacity
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0
        self.start = 0

    @property
    def pos(self) -> int:
        """Absolute position of the next token."""
        return self.start + self.length

    def reset(self) -> None:
        """Forget everything (the buffers are kept)."""
        self.length = self.start = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys/values (B, H, T, D); return all (B, H, length+T, D)."""
        B, H, T, D = k.shape
        if self.k is None or self.k.shape[1:3] != (B, H) or self.k.dtype != k.dtype:
            if self.length:
                raise RuntimeError("KV cache used with a new batch size or dtype while not empty")
            shape = (self.n_layer, B, H, self.capacity, D)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=k.dtype, device=k.device)
        end = self.length + T
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more tokens as written (called once per forward, after all layers)."""
        self.length += n

    def select(self, rows: list[int]) -> KVCache:
        """A new cache holding only these batch rows (same length and positions)."""
        out = KVCache(self.n_layer, self.capacity)
        out.length, out.start = self.length, self.start
        if self.k is not None:
            idx = torch.tensor(rows, device=self.k.device)
            out.k, out.v = self.k.index_select(1, idx), self.v.index_select(1, idx)
        return out

    def crop(self, keep_last: int) -> None:
        """Keep only the last `keep_last` tokens.

        With RoPE the retained keys keep their absolute positions, so attention scores to them are
        unchanged. Note this is not identical to recomputing over the retained window: for layers
        above the first, the retained keys/values were computed while the dropped tokens were still
        visible (the usual sliding-window approximation). Re-prefill the window to be exact.
        """
        keep = max(0, min(keep_last, self.length))
        drop = self.length - keep
        if drop and keep and self.k is not None:
            self.k[:, :, :, :keep] = self.k[:, :, :, drop : self.length].clone()
            self.v[:, :, :, :keep] = self.v[:, :, :, drop : self.length].clone()
        self.start += drop
        self.length = keep


def rope_cos_sin(start: int, T: int, head_dim: int, base: float, device) -> tuple[Tensor, Tensor]:
    """cos and sin (T, D/2) of positions start .. start+T-1, in float32."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.arange(start, start + T, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) queries or keys by their positions (rotate-half form)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


# Acting on a CPU: a few new queries over a KV cache (batch 1: the observation's prefill and each
# action token). There SDPA's CPU flash kernel costs ~1 ms a call, mostly fixed overhead, while
# plain q @ k^T -> softmax -> @ v on these small matrices is cheaper (benchmarks/RESULTS.md). Above
# this many q-elements x keys (e.g. 16 envs' prefill) the fused kernel wins and is used.
_SMALL_ATTN = 1 << 26


def _small_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v, unfused; the same result as SDPA up to rounding."""
    scores = (q @ k.transpose(-2, -1)).float() * (q.shape[-1] ** -0.5)
    if mask is not None:  # an additive bias (0 / -inf): ~8x cheaper than masked_fill on scores
        scores = scores + mask
    return (scores.softmax(-1).to(v.dtype)) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True

    def forward(self, x, rope, cache: KVCache | None, layer: int, mask: Tensor | None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:  # each (B, H, T, D)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, L+T, D)
        # Causal inside the new tokens; with cached keys the mask is passed explicitly because
        # SDPA's is_causal aligns the triangle top-left. Attention weights get no dropout: it would
        # force SDPA's unfused path on CPU (regularisation is on the residual branches instead).
        if (
            cache is not None
            and (mask is not None or T == 1)
            and q.device.type == "cpu"
            and q.numel() * k.shape[2] <= _SMALL_ATTN
        ):
            y = _small_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if mask is None else mask.to(q.dtype),
                is_causal=mask is None and T > 1 and k.shape[2] == T,
            )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.geglu = cfg.ffn == "geglu"
        self.up = nn.Linear(cfg.n_embd, (2 if self.geglu else 1) * cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.down.residual = True

    def forward(self, x):
        h = self.up(x)
        if self.geglu:
            gate, h = h.chunk(2, dim=-1)
            return self.down(F.gelu(gate) * h)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.ffn = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer, mask):
        x = x + self.drop(self.attn(self.ln_1(x), rope, cache, layer, mask))
        return x + self.drop(self.ffn(self.ln_2(x)))


class PatchEmbed(nn.Module):
    """Image patch -> vector: one ResNet v2 (pre-activation) block, then a linear projection.

    (Np, 3, P, P) -> stem conv -> x + conv(GELU(GN(conv(GELU(GN(x)))))) -> GELU(GN) -> 2x2 average
    pool -> flatten -> linear -> (Np, C), plus the row and column position embeddings.
    Departure: the paper does not give the block's width or how its output becomes a vector; the
    pooling keeps the projection small (32 channels x 8 x 8 -> C) instead of 16x16 positions.
    """

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        c = cfg.patch_channels
        self.stem = nn.Conv2d(cfg.image_channels, c, 3, padding=1)
        self.norm1, self.conv1 = nn.GroupNorm(_GN_GROUPS, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_GN_GROUPS, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm_out = nn.GroupNorm(_GN_GROUPS, c)
        self.proj = nn.Linear(c * (cfg.patch_size // 2) ** 2, cfg.n_embd, bias=cfg.bias)
        self.row_emb = nn.Embedding(cfg.position_vocab, cfg.n_embd)
        self.col_emb = nn.Embedding(cfg.position_vocab, cfg.n_embd)

    def forward(self, patches: Tensor, patch_pos: Tensor) -> Tensor:
        """(Np, 3, P, P) patches and (Np, 4) intervals -> (Np, C)."""
        x = self.stem(patches)
        h = self.conv1(F.gelu(self.norm1(x)))
        x = x + self.conv2(F.gelu(self.norm2(h)))
        x = F.avg_pool2d(F.gelu(self.norm_out(x)), 2)
        x = self.proj(x.flatten(1))  # (Np, C)
        row, col = self.position_index(patch_pos)
        return x + self.row_emb(row) + self.col_emb(col)

    def position_index(self, patch_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Row and column indices (Np,): uniform in [lo, hi) when training, else (lo+hi-1)//2."""
        lo, hi = patch_pos[:, 0::2], patch_pos[:, 1::2]  # (Np, 2): rows, cols
        if self.training:
            idx = lo + (torch.rand(lo.shape, device=lo.device) * (hi - lo)).long()
        else:
            idx = (lo + hi - 1).div(2, rounding_mode="floor").clamp(min=0)
        return idx[:, 0], idx[:, 1]


def smooth_embeddings(n: int, dim: int, std: float, scale: float) -> Tensor:
    """(n, dim) embeddings of n ordered values whose dot products approximate an RBF kernel
    exp(-(i - j)^2 / (2 scale^2)) (random Fourier features), with per-coordinate std `std`.
    Drawn from torch's global generator, like the rest of the initialisation."""
    w = torch.randn(dim) / scale
    phase = torch.rand(dim) * 2 * math.pi
    i = torch.arange(n, dtype=torch.float32)[:, None]
    return torch.cos(i * w + phase) * (std * math.sqrt(2.0))


class Gato(nn.Module):
    """Decoder-only Gato transformer over a `GatoBatch`."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # Row 0 stands for "no observation position" (obs_pos == -1): zero and never trained.
        self.obs_pos_emb = nn.Embedding(cfg.max_obs_pos + 1, cfg.n_embd, padding_idx=0)
        self.patch_embed = PatchEmbed(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        start, stop = cfg.bin_ids
        if cfg.bin_init == "smooth" and stop > start:
            with torch.no_grad():
                self.wte.weight[start:stop] = smooth_embeddings(stop - start, cfg.n_embd, 0.02,
                                                                cfg.bin_init_scale)  # fmt: skip

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            # nanoGPT / GPT-2: residual projections scaled by 1/sqrt(2 * n_layer).
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; `non_embedding` leaves out the lookup tables (token, observation
        position, patch row/column). The output layer is the tied token table, counted once."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            tables = (m for m in self.modules() if isinstance(m, nn.Embedding))
            n -= sum(m.weight.numel() for m in tables)
        return n

    def describe(self) -> str:
        """One line: the preset name beside the real parameter counts."""
        c = self.cfg
        return (
            f"{c.name}: {self.num_params() / 1e6:.1f}M params "
            f"({self.num_params(non_embedding=True) / 1e6:.1f}M non-embedding; "
            f"{c.n_layer} blocks, width {c.n_embd}, {c.n_head} heads, {c.ffn} FFN {c.d_ff}, "
            f"vocab {c.vocab_size})"
        )

    def make_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache holding up to `capacity` tokens (default: context_len)."""
        return KVCache(self.cfg.n_layer, capacity or self.cfg.context_len)

    def hidden(self, batch: GatoBatch, cache: KVCache | None = None) -> Tensor:
        """Final-norm hidden states (B, T, C) of the batch's tokens, after those in `cache`."""
        cfg = self.cfg
        B, T = batch.ids.shape
        if cache is not None and cache.length + T > cache.capacity:
            raise RuntimeError(
                f"KV cache full ({cache.length} + {T} > {cache.capacity} tokens): crop() it first"
            )
        x = self.wte(batch.ids)  # (B, T, C)
        if batch.patches.shape[0]:  # the image path runs on image tokens only
            pe = self.patch_embed(batch.patches, batch.patch_pos).to(x.dtype)  # (Np, C)
            x = x.reshape(B * T, -1).index_copy(0, batch.patch_index, pe).view(B, T, -1)
        if int(batch.obs_pos.max()) >= cfg.max_obs_pos:
            raise ValueError(
                f"observation position {int(batch.obs_pos.max())} >= max_obs_pos={cfg.max_obs_pos};"
                " raise max_obs_pos in the model config"
            )
        x = self.drop(x + self.obs_pos_emb(batch.obs_pos + 1))

        past = cache.length if cache is not None else 0
        start = cache.pos if cache is not None else 0
        rope = None
        if cfg.pos_encoding == "rope":
            rope = rope_cos_sin(start, T, cfg.n_embd // cfg.n_head, cfg.rope_base, x.device)
        mask = None
        if past and T > 1:  # new token i sees every cached key and new keys up to itself
            visible = (
                torch.arange(past + T, device=x.device)
                <= past + torch.arange(T, device=x.device)[:, None]
            )
            # Built once as an additive bias, which both attention paths take as it is.
            mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device)
            mask.masked_fill_(~visible, float("-inf"))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def forward(
        self, batch: GatoBatch, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) and the weighted mean next-token loss (None if
        `batch.target_weight` is None).

        `logits[:, t]` predicts `ids[:, t+1]`; the loss counts targets where `loss_mask` is True,
        each with its `target_weight`."""
        logits = self.lm_head(self.hidden(batch, cache))  # (B, T, V)
        if batch.target_weight is None:
            return logits, None
        mask = loss_mask(batch)[:, 1:]
        ce = F.cross_entropy(logits[:, :-1][mask].float(), batch.ids[:, 1:][mask], reduction="none")
        w = batch.target_weight[:, 1:][mask].float()
        return logits, (ce * w).sum() / w.sum()

    def compute_loss(self, batch: GatoBatch, reduction: Literal["mean", "none"] = "mean") -> Tensor:
        """The training loss, computing logits only where a target counts (much cheaper than
        `forward` when few tokens are targets). `mean`: scalar, equal to `forward`'s loss (the
        `target_weight`-weighted mean). `none`: float (B, T), entry t the unweighted loss of
        predicting ids[:, t] (0 where `loss_mask` is False), so that validation can report a
        loss per domain and per role."""
        h = self.hidden(batch)
        mask = loss_mask(batch)
        logits = self.lm_head(h[:, :-1][mask[:, 1:]])  # (N, V)
        ce = F.cross_entropy(logits.float(), batch.ids[mask], reduction="none")  # (N,)
        if reduction == "mean":
            if not ce.numel():
                return h.sum() * 0.0
            w = batch.target_weight[mask].float()
            return (ce * w).sum() / w.sum()
        return torch.zeros(mask.shape, dtype=ce.dtype, device=ce.device).masked_scatter(mask, ce)

    @torch.no_grad()
    def next_logits(
        self, batch: GatoBatch, cache: KVCache | None = None, vocab: tuple[int, int] | None = None
    ) -> Tensor:
        """Feed the batch's (new) tokens through the cache (None: a full forward); float logits
        at the last position, (B, V), or (B, hi - lo) over token ids [lo, hi) when `vocab` is
        given: acting needs only the action ids, and skipping the rest of the output layer
        (~33k x width for the paper's vocabulary) is most of a decoding step's saving."""
        h = self.hidden(batch, cache)[:, -1]
        w = self.lm_head.weight if vocab is None else self.lm_head.weight[vocab[0] : vocab[1]]
        return F.linear(h, w).float()

    def configure_optimizers(
        self, weight_decay: float, lr: float, betas: tuple[float, float], eps: float = 1e-8
    ) -> torch.optim.AdamW:
        """AdamW; weight decay only on matrices/conv kernels, not on norms, biases or embeddings."""
        tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and id(p) not in tables else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)

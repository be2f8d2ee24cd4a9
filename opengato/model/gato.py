"""The Gato transformer: its config and the model, in one file (nanoGPT style).

A decoder-only, pre-norm transformer over one flat token stream (docs/method.md sections 1-3).
Text, discrete and continuous tokens share one embedding table (tied with the output layer);
image patches are embedded by a single ResNet v2 block plus row/column position embeddings;
observation tokens get a learned local position embedding. Shapes: B batch, T time, C width,
H heads, D head size, V vocabulary, Np image patches in the batch. The named shapes are in
`opengato.model.presets`, the model's input (GatoBatch) in `opengato.model.inputs`, the image
patch encoder in `opengato.model.patch_embed` and the KV cache for acting in
`opengato.model.kv_cache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from opengato.model import decoding
from opengato.model.inputs import GatoBatch
from opengato.model.kv_cache import KVCache
from opengato.model.patch_embed import GN_GROUPS, PatchEmbed


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
        if self.patch_channels % GN_GROUPS or self.patch_size % 2:
            raise ValueError(f"patch_channels must be a multiple of {GN_GROUPS}, patch_size even")


def rope_cos_sin(start: int, T: int, head_dim: int, base: float, device) -> tuple[Tensor, Tensor]:
    """The rotation (T, D) of positions start .. start+T-1 in float32, as (cos, sin) laid out for
    `apply_rope`: [cos, cos] and [-sin, sin] over the two halves of a head."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.arange(start, start + T, device=device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (..., T, D) queries and/or keys by their positions (rotate-half form):
    [x1 cos - x2 sin, x2 cos + x1 sin] for halves x1, x2, from `rope_cos_sin`'s layout in
    6 elementwise ops (the same floats as the textbook 9: a + (-b) is a - b exactly)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((x2, x1), dim=-1) * sin).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True

    def forward(
        self, x, rope, cache: KVCache | None, layer: int, mask: Tensor | None, last: bool = False
    ):
        """Attention output (B, T, C), or (B, 1, C) for the last token only when `last` (the
        keys and values of all T tokens still go to the cache)."""
        B, T, C = x.shape
        qkv = (
            decoding.dense(self.qkv, x)
            .view(B, T, 3, self.n_head, C // self.n_head)
            .permute(2, 0, 3, 1, 4)
        )
        if rope is not None:  # queries and keys rotated at once: (2, B, H, T, D)
            q, k = apply_rope(qkv[:2], *rope).unbind(0)
            v = qkv[2]
        else:
            q, k, v = qkv.unbind(0)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, L+T, D)
        if last and T > 1:  # the last token sees every key: no mask beyond its own row
            q, mask, T = q[:, :, -1:], None if mask is None else mask[..., -1:, :], 1
        # Causal inside the new tokens; with cached keys the mask is passed explicitly because
        # SDPA's is_causal aligns the triangle top-left. Attention weights get no dropout: it would
        # force SDPA's unfused path on CPU (regularisation is on the residual branches instead).
        # Acting with a cache, a few queries: unfused is faster. On a CPU below a size measured
        # there; on a GPU for every single-query step, whose scores are small: SDPA with a mask
        # picked cuDNN there, ~0.6 ms of CPU a call (RESULTS.md, "On one H100"; now left out:
        # `decoding.attention_backends`, which `trunk` enters).
        if (
            cache is not None
            and (mask is not None or T == 1)
            and (
                q.numel() * k.shape[2] <= decoding.SMALL_ATTN or (q.device.type != "cpu" and T == 1)
            )
        ):
            y = decoding.small_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if mask is None else mask.to(q.dtype),
                is_causal=mask is None and T > 1 and k.shape[2] == T,
            )
        return decoding.dense(self.proj, y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.geglu = cfg.ffn == "geglu"
        self.up = nn.Linear(cfg.n_embd, (2 if self.geglu else 1) * cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.down.residual = True

    def forward(self, x):
        h = decoding.dense(self.up, x)
        if self.geglu:
            gate, h = h.chunk(2, dim=-1)
            return decoding.dense(self.down, F.gelu(gate) * h)
        return decoding.dense(self.down, F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.ffn = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer, mask, last: bool = False):
        """The block over (B, T, C); `last`: only the last token's output (B, 1, C), for the top
        block of a decoding step, whose other outputs nothing reads (their keys and values, made
        inside attention, still reach the cache). Dropout is skipped in eval mode, where it is
        the identity."""
        a = self.attn(self.ln_1(x), rope, cache, layer, mask, last)
        if last:
            x = x[:, -1:]
        x = x + (self.drop(a) if self.training else a)
        f = self.ffn(self.ln_2(x))
        return x + (self.drop(f) if self.training else f)


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

    zero_grads_when_unused = False
    """Give the patch encoder zero gradients in a forward without images (None otherwise): set by
    `training.sharding.shard_model` where torch lacks FSDP's own way to reduce unused ones."""

    def __init__(self, cfg: GatoConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # Row 0 stands for "no observation position" (obs_pos == -1): zero and never trained.
        self.obs_pos_emb = nn.Embedding(cfg.max_obs_pos + 1, cfg.n_embd, padding_idx=0)
        self.patch_embed = PatchEmbed(
            patch_size=cfg.patch_size,
            image_channels=cfg.image_channels,
            patch_channels=cfg.patch_channels,
            n_embd=cfg.n_embd,
            position_vocab=cfg.position_vocab,
            bias=cfg.bias,
        )
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

    def check_obs_pos(self, obs_pos: Tensor) -> None:
        """Refuse observation positions (long (B, T)) past the position table: a ValueError
        naming `max_obs_pos`. Reads them on the host (on a GPU it waits for the device)."""
        top = int(obs_pos.max()) if obs_pos.numel() else -1
        if top >= self.cfg.max_obs_pos:
            raise ValueError(
                f"observation position {top} >= max_obs_pos={self.cfg.max_obs_pos};"
                " raise max_obs_pos in the model config"
            )

    def _rope_rows(self, start: int, T: int, device) -> tuple[Tensor, Tensor]:
        """`rope_cos_sin(start, T)` as rows of a table kept for decoding (a decoding step would
        otherwise spend more time building its few rows than using them). The same floats: each
        row is the same position times the same frequencies. Grows by doubling."""
        table = getattr(self, "_rope_table", None)
        if table is None or table[0].shape[0] < start + T or table[0].device != device:
            n = 1 << max(10, (start + T - 1).bit_length())
            head_dim = self.cfg.n_embd // self.cfg.n_head
            table = rope_cos_sin(0, n, head_dim, self.cfg.rope_base, device)
            self._rope_table = table
        return table[0][start : start + T], table[1][start : start + T]

    def make_cache(self, capacity: int | None = None, static: bool = False) -> KVCache:
        """An empty KV cache holding up to `capacity` tokens (default: context_len); `static`:
        fixed shapes, for compiled decoding (model/kv_cache.py)."""
        return KVCache(self.cfg.n_layer, capacity or self.cfg.context_len, static)

    def hidden(
        self,
        batch: GatoBatch,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
        last: bool = False,
    ) -> Tensor:
        """Final-norm hidden states (B, T, C) of the batch's tokens, after those in `cache`;
        `generator` draws the patch positions in training mode. `last`: the last token's only,
        (B, 1, C) (decoding reads no other; the top block then skips the rest)."""
        x = self.embed(batch, generator)
        rope, mask = self.positions(batch.ids.shape[1], cache, x.dtype, x.device)
        x = self.trunk(x, rope, cache, mask, last)
        if cache is not None:
            cache.advance(batch.ids.shape[1])
        return x

    def positions(
        self, T: int, cache: KVCache | None, dtype: torch.dtype, device: torch.device
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """The RoPE rotation of the next T tokens (after those in `cache`) and, with a cache,
        the attention mask `cache.begin` gives for them (it places them in the cache)."""
        cfg = self.cfg
        if cache is not None and cache.ragged:  # a position per row and token (kv_cache.py)
            mask = cache.begin(T, dtype, device)
            rope = None
            if cfg.pos_encoding == "rope":
                cos, sin = self._rope_rows(0, int(cache.row_pos.max()) + T, device)
                at = cache.query_pos  # (B, T)
                rope = cos[at][:, None], sin[at][:, None]  # (B, 1, T, D): broadcast over heads
            return rope, mask
        start = cache.pos if cache is not None else 0
        rope = None
        if cfg.pos_encoding == "rope" and cache is not None:  # decoding: rows of a table
            rope = self._rope_rows(start, T, device)
        elif cfg.pos_encoding == "rope":
            rope = rope_cos_sin(start, T, cfg.n_embd // cfg.n_head, cfg.rope_base, device)
        # With a cache, new token i sees the cached keys and the new ones up to itself: an
        # additive bias built once (None when plain causal or all-visible does).
        mask = cache.begin(T, dtype, device) if cache is not None else None
        return rope, mask

    def trunk(self, x: Tensor, rope, cache: KVCache | None, mask: Tensor | None,
              last: bool = False) -> Tensor:  # fmt: skip
        """The blocks and the final norm over embeddings x (B, T, C), given `positions`."""
        top = len(self.blocks) - 1
        with decoding.attention_backends(x, cache, mask):
            for i, block in enumerate(self.blocks):
                x = block(x, rope, cache, i, mask, last and i == top)
        return self.ln_f(x)

    def embed(self, batch: GatoBatch, generator: torch.Generator | None = None) -> Tensor:
        """Input embeddings (B, T, C): token or image patch, plus local observation position."""
        B, T = batch.ids.shape
        x = self.wte(batch.ids)  # (B, T, C)
        if batch.patches.shape[0]:  # the image path runs on image tokens only
            pe = self.patch_embed(batch.patches, batch.patch_pos, generator)  # (Np, C)
            x = x.reshape(B * T, -1).index_copy(0, batch.patch_index, pe.to(x.dtype)).view(B, T, -1)
        elif self.zero_grads_when_unused:  # FSDP on torch < 2.12 (training/sharding.py)
            x = x + 0.0 * sum(p.sum() for p in self.patch_embed.parameters())
        # The check reads obs_pos on the host: free when it is there, and cheap at inference,
        # which reads its logits back anyway. Training on a GPU checks its batches where they
        # are built (training/train.py, `step_data`), so that its forward never waits for the
        # device; compiled code and CUDA graphs leave it out (it would break the graph).
        pos = batch.obs_pos
        traced = torch.compiler.is_compiling() or (
            pos.is_cuda and torch.cuda.is_current_stream_capturing()
        )
        if not traced and (pos.device.type == "cpu" or not self.training):
            self.check_obs_pos(pos)
        return self.drop(x + self.obs_pos_emb(batch.obs_pos + 1))

    def forward(
        self,
        batch: GatoBatch,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
        reduction: Literal["mean", "none"] = "mean",
    ) -> tuple[Tensor, Tensor | None]:
        """Logits and the next-token loss of a batch (after the tokens in `cache`, if any).

        At inference (`batch.target_weight` None): logits (B, T, V), loss None. With targets:
        logits (N, V) only where `logits[:, t]` predicts a counted target `ids[:, t+1]`
        (`batch.target_mask()`, row by row, as `batch.target_index` lists them): the rest of the
        output layer is skipped, and most tokens of a control sequence are observations, never
        targets. Nothing here reads a value back from the device when `target_index` is set
        (`make_batch` sets it), so a training step on a GPU never waits for it. The loss is the
        `target_weight`-weighted mean cross-entropy (`reduction="mean"`), or float (B, T) whose
        entry t is the unweighted loss of predicting ids[:, t], 0 where that is no target
        (`"none"`: validation reports it per domain and role). `generator` draws the image
        patches' positions in training mode (None: torch's default generator)."""
        h = self.hidden(batch, cache, generator)  # (B, T, C)
        B, T = batch.ids.shape
        if batch.target_weight is None:
            return self.lm_head(h), None
        index = batch.target_index  # (N,) into B*T: the counted targets, row by row
        if index is None:
            index = batch.with_target_index().target_index
        # Token t is predicted at t - 1, in the same row: no target sits at a row's start.
        logits = self.lm_head(h.flatten(0, 1)[index - 1])  # (N, V)
        ce = F.cross_entropy(logits.float(), batch.ids.flatten()[index], reduction="none")  # (N,)
        if reduction == "none":
            per_token = torch.zeros(B * T, dtype=ce.dtype, device=ce.device)
            return logits, per_token.index_copy(0, index, ce).view(B, T)  # (B, T)
        if not ce.numel():  # no target: a zero loss that still reaches every parameter
            return logits, h.sum() * 0.0
        w = batch.target_weight.flatten()[index].float()
        return logits, (ce * w).sum() / w.sum()

    @torch.no_grad()
    def next_logits(
        self, batch: GatoBatch, cache: KVCache | None = None, vocab: tuple[int, int] | None = None
    ) -> Tensor:
        """Feed the batch's (new) tokens through the cache (None: a full forward); float logits
        at the last position, (B, V), or (B, hi - lo) over token ids [lo, hi) when `vocab` is
        given: acting needs only the action ids, and skipping the rest of the output layer
        (~33k x width for the paper's vocabulary) is most of a decoding step's saving."""
        h = self.hidden(batch, cache, last=True)[:, -1]
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

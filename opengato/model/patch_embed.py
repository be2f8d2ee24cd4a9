"""Image patch -> vector: the image path of Gato's embedding (docs/method.md section 2).

Each 16x16 patch goes through one ResNet v2 block, then gets a row and a column position
embedding of its (quantised) place in the image; `Gato` puts the result where the patch's
IMAGE token is in the stream.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

GN_GROUPS = 8  # GroupNorm groups in the patch ResNet block


class PatchEmbed(nn.Module):
    """Image patch -> vector: one ResNet v2 (pre-activation) block, then a linear projection.

    (Np, 3, P, P) -> stem conv -> x + conv(GELU(GN(conv(GELU(GN(x)))))) -> GELU(GN) -> 2x2 average
    pool -> flatten -> linear -> (Np, C), plus the row and column position embeddings.
    Departure: the paper does not give the block's width or how its output becomes a vector; the
    pooling keeps the projection small (32 channels x 8 x 8 -> C) instead of 16x16 positions.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        image_channels: int,
        patch_channels: int,
        n_embd: int,
        position_vocab: int,
        bias: bool,
    ):
        """Patches of `image_channels` x `patch_size`^2 pixels -> vectors of width `n_embd`;
        `patch_channels` wide inside the block, `position_vocab` rows and columns."""
        super().__init__()
        c = patch_channels
        self.stem = nn.Conv2d(image_channels, c, 3, padding=1)
        self.norm1, self.conv1 = nn.GroupNorm(GN_GROUPS, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(GN_GROUPS, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm_out = nn.GroupNorm(GN_GROUPS, c)
        self.proj = nn.Linear(c * (patch_size // 2) ** 2, n_embd, bias=bias)
        self.row_emb = nn.Embedding(position_vocab, n_embd)
        self.col_emb = nn.Embedding(position_vocab, n_embd)

    def forward(
        self, patches: Tensor, patch_pos: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """(Np, 3, P, P) patches and (Np, 4) intervals -> (Np, C)."""
        x = self.stem(patches)
        h = self.conv1(F.gelu(self.norm1(x)))
        x = x + self.conv2(F.gelu(self.norm2(h)))
        x = F.avg_pool2d(F.gelu(self.norm_out(x)), 2)
        x = self.proj(x.flatten(1))  # (Np, C)
        row, col = self.position_index(patch_pos, generator)
        return x + self.row_emb(row) + self.col_emb(col)

    def position_index(
        self, patch_pos: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Row and column indices (Np,): uniform in [lo, hi) when training, drawn from
        `generator` (None: torch's default one), else (lo+hi-1)//2."""
        lo, hi = patch_pos[:, 0::2], patch_pos[:, 1::2]  # (Np, 2): rows, cols
        if self.training:
            # torch.rand itself, but it also compiles with a symbolic number of patches, which
            # torch.rand(..., generator=None) does not (torch 2.13).
            u = torch.empty(lo.shape, device=lo.device).uniform_(generator=generator)
            idx = lo + (u * (hi - lo)).long()
        else:
            idx = (lo + hi - 1).div(2, rounding_mode="floor").clamp(min=0)
        return idx[:, 0], idx[:, 1]

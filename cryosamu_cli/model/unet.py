"""The structure-aware multimodal 3D U-Net of CryoSAMU (§3.3).

Encoder: levels of residual blocks (GroupNorm, SiLU, dropout, Conv3d), linear self-attention
after the blocks of the attention levels, strided-conv downsampling. Bottleneck: residual block,
linear self-attention, cross-attention to an ``L × struct_dim`` structure embedding (queries from
voxels), residual block. Decoder: symmetric, with skip connections and nearest-neighbour
upsampling followed by a convolution; GroupNorm, SiLU and a Conv3d to one channel.
Without an embedding the cross-attention is bypassed (§3.4), as at validation and inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cryosamu_cli.model.config import UNetConfig


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that stays accurate on channels-last 3D tensors.

    PyTorch's channels-last CPU kernel loses precision on activations far from zero mean: on
    the stem output of a mostly empty cube (per-channel constants plus sparse density) it was
    off by 0.2 in normalised units, where the contiguous kernel is within 3e-6 of float64, and
    the whole network's output by up to 7 % of its range. Here the per-channel sums and sums of
    squares come from torch's pairwise reductions over a voxels × channels view, are combined
    per group in float64, and the affine map is applied in one pass (error below 3e-4 even for
    a mean 30 standard deviations from zero). Other layouts and dtypes (autocast) use the
    native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 5 or x.dtype != torch.float32 or x.is_contiguous()
                or not x.is_contiguous(memory_format=torch.channels_last_3d)):
            return super().forward(x)
        scale, shift = self._scale_and_shift(x)
        return torch.addcmul(shift[:, :, None, None, None], x, scale[:, :, None, None, None])

    def _scale_and_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample, per-channel ``scale`` and ``shift`` with ``norm(x) = x · scale + shift``."""
        b, channels = x.shape[:2]
        per_group = channels // self.num_groups
        voxels_by_channel = x.permute(0, 2, 3, 4, 1).reshape(b, -1, channels)
        count = voxels_by_channel.shape[1] * per_group
        sums = voxels_by_channel.sum(dim=1).double()
        squares = voxels_by_channel.square().sum(dim=1).double()
        mean = sums.reshape(b, self.num_groups, per_group).sum(-1) / count
        mean_square = squares.reshape(b, self.num_groups, per_group).sum(-1) / count
        rstd = ((mean_square - mean.square()).clamp_min(0) + self.eps).rsqrt()
        scale = rstd.repeat_interleave(per_group, dim=1)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return scale.float(), shift.float()


class ResBlock(nn.Module):
    """Two GroupNorm → SiLU → (dropout) → Conv3d stages with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv3d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class LinearAttention3D(nn.Module):
    """Multi-head linear self-attention over all voxels, cost linear in their number.

    Queries are softmax-normalised over each head's channels, keys over the voxels; each head's
    ``head_dim × head_dim`` context is ``keysᵀ · values``, and the output ``queries · context``.
    The heads are computed together as two matrix products over a voxel-by-channel view of the
    channels-last tensor, with a block-diagonal mask keeping each head to its own context, so no
    full-size tensor is transposed (see docs/performance.md).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        hidden = heads * head_dim
        self.norm = GroupNorm(groups, channels)
        self.to_qkv = nn.Conv3d(channels, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        hidden = self.heads * self.head_dim
        qkv = self.to_qkv(self.norm(x)).permute(0, 2, 3, 4, 1)  # a view when channels-last
        q, k, v = qkv.reshape(b, d * h * w, 3 * hidden).split(hidden, dim=-1)
        q = q.unflatten(-1, (self.heads, self.head_dim)).softmax(dim=-1).flatten(2)
        context = self._context(k, v) * (self._same_head_mask(x) * self.scale)
        out = torch.bmm(q, context.to(q.dtype))
        return x + self.to_out(out.reshape(b, d, h, w, hidden).permute(0, 4, 1, 2, 3))

    @staticmethod
    def _context(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``softmax_voxels(k)ᵀ · v``, ``(B, hidden, hidden)``, always in fp32: the sum of
        exp(keys) runs over every voxel (262,144 in a 64³ cube), which overflows fp16
        (max 65,504) and loses the small terms in bf16, so autocast is off here."""
        with torch.autocast(k.device.type, enabled=False):
            k, v = k.float(), v.float()
            k_exp = (k - k.amax(dim=1, keepdim=True)).exp()
            return torch.bmm(k_exp.transpose(1, 2), v) / k_exp.sum(dim=1).unsqueeze(-1)

    def _same_head_mask(self, like: torch.Tensor) -> torch.Tensor:
        """``hidden × hidden`` block-diagonal ones: channel pairs within one head."""
        block = like.new_ones(self.head_dim, self.head_dim)
        return torch.block_diag(*[block] * self.heads)


class CrossAttention3D(nn.Module):
    """Voxel queries attending to structure-embedding keys/values, with a residual connection."""

    def __init__(self, channels: int, struct_dim: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels)
        self.struct_norm = nn.LayerNorm(struct_dim)
        self.attention = nn.MultiheadAttention(channels, heads, kdim=struct_dim, vdim=struct_dim,
                                               batch_first=True)

    def forward(self, x: torch.Tensor, struct: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        queries = self.norm(x).flatten(2).transpose(1, 2)
        keys = self.struct_norm(struct)
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        return x + attended.transpose(1, 2).reshape(b, c, d, h, w)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3×3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """Residual blocks of one U-Net level, optionally followed by linear self-attention."""

    def __init__(self, in_channels: int, out_channels: int, cfg: UNetConfig,
                 attention: bool) -> None:
        super().__init__()
        blocks = [ResBlock(in_channels if i == 0 else out_channels, out_channels, cfg.dropout,
                           cfg.norm_groups) for i in range(cfg.num_res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.attention = (LinearAttention3D(out_channels, cfg.attention_heads,
                                            cfg.attention_head_dim, cfg.norm_groups)
                          if attention else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.blocks(x))


class UNet3D(nn.Module):
    """CryoSAMU's structure-aware 3D U-Net.

    ``forward(x, struct=None)`` takes ``x`` of shape ``(B, 1, n, n, n)`` with ``n`` divisible by
    ``config.downsampling_factor`` and an optional ``struct`` of shape ``(B, L, struct_dim)``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.level_channels
        self.stem = nn.Conv3d(1, channels[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        previous = channels[0]
        for level, (ch, attn) in enumerate(zip(channels, config.attention_levels)):
            self.encoder.append(Level(previous, ch, config, attn))
            is_last = level == len(channels) - 1
            self.downsamplers.append(nn.Identity() if is_last
                                     else nn.Conv3d(ch, ch, 3, stride=2, padding=1))
            previous = ch
        self._build_bottleneck(channels[-1])
        self._build_decoder(channels)
        self.head = nn.Sequential(GroupNorm(config.norm_groups, channels[0]), nn.SiLU(),
                                  nn.Conv3d(channels[0], 1, 3, padding=1))

    def _build_bottleneck(self, ch: int) -> None:
        cfg = self.config
        self.mid_block1 = ResBlock(ch, ch, cfg.dropout, cfg.norm_groups)
        self.mid_attention = LinearAttention3D(ch, cfg.attention_heads, cfg.attention_head_dim,
                                               cfg.norm_groups)
        self.mid_cross = CrossAttention3D(ch, cfg.struct_dim, cfg.cross_attention_heads,
                                          cfg.norm_groups)
        self.mid_block2 = ResBlock(ch, ch, cfg.dropout, cfg.norm_groups)

    def _build_decoder(self, channels: tuple[int, ...]) -> None:
        cfg = self.config
        self.decoder = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        previous = channels[-1]
        for level in reversed(range(len(channels))):
            ch = channels[level]
            self.decoder.append(Level(previous + ch, ch, cfg, cfg.attention_levels[level]))
            self.upsamplers.append(Upsample(ch) if level > 0 else nn.Identity())
            previous = ch

    @classmethod
    def from_config(cls, config: UNetConfig) -> "UNet3D":
        """Build a freshly initialised network from ``config``."""
        return cls(config)

    def forward(self, x: torch.Tensor, struct: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for level, down in zip(self.encoder, self.downsamplers):
            h = level(h)
            skips.append(h)
            h = down(h)
        h = self.mid_attention(self.mid_block1(h))
        if struct is not None:
            h = self.mid_cross(h, struct.to(h.dtype))
        h = self.mid_block2(h)
        for level, up in zip(self.decoder, self.upsamplers):
            h = up(level(torch.cat([h, skips.pop()], dim=1)))
        return self.head(h)

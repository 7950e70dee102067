"""Small convolutional embedding networks that train from scratch on CPU (no pretrained weights to download)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvEmbedder"]


class ConvEmbedder(nn.Module):
    """Stacked ``conv3x3 -> BatchNorm -> ReLU -> max-pool`` blocks, global average pooling and a linear head.

    With the defaults it suits 8x8 digits (three blocks take 8x8 to 1x1); more channels or blocks suit larger
    images such as the 112x92 ORL faces.

    Args:
        in_channels: channels of the input images (1 for greyscale).
        embedding_dim: size of the output embedding.
        channels: output channels of each block; one block per entry.
        dropout: dropout before the linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        embedding_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("`channels` must name at least one block, got an empty sequence")
        blocks: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], embedding_dim))
        self.in_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` images to ``(N, embedding_dim)`` embeddings."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"`images` must have shape (N, {self.in_channels}, H, W), got shape {tuple(images.shape)}"
            )
        dtype = self.head[-1].weight.dtype
        if images.dtype != dtype:
            raise ValueError(f"`images` must have the network's dtype {dtype}, got {images.dtype}")
        features = self.features(images)
        return self.head(torch.flatten(features.mean(dim=(2, 3), keepdim=True), 1))

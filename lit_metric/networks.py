"""Small convolutional embedding networks that train from scratch on CPU (no pretrained weights to download)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvEmbedder", "PartEmbedder", "part_rows"]


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


def part_rows(height: int, parts: int, part_height: int) -> list[int]:
    """First rows of ``parts`` horizontal bands of ``part_height`` rows, spread evenly from the top to the bottom of
    an image ``height`` rows high, overlapping where ``parts * part_height > height``.

    Raises:
        ValueError: naming the argument when a band is higher than the image, or the bands leave rows uncovered.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"`parts` must be a positive integer, got {parts!r}")
    if not 1 <= part_height <= height:
        raise ValueError(f"`part_height` must be in [1, {height}] for images {height} rows high, got {part_height}")
    if parts * part_height < height:
        raise ValueError(
            f"`parts` x `part_height` must cover the image's {height} rows, got {parts} x {part_height}; raise either"
        )
    if parts == 1:
        return [0]
    return [round(i * (height - part_height) / (parts - 1)) for i in range(parts)]


class PartEmbedder(nn.Module):
    """The part-based network of Yi et al. 2014: overlapping horizontal parts, a conv tower each, one embedding.

    A pedestrian image is cut into ``parts`` horizontal bands of ``part_height`` rows, spread evenly over its height
    (:func:`part_rows`; 128x48 VIPeR images give the paper's three 48x48 parts at rows 0, 40 and 80). Each band goes
    through its own :class:`ConvEmbedder` tower, or one tower shared by all bands, to ``embedding_dim / parts``
    features. The part features are concatenated and batch-normalised: training and evaluation see that
    ``(N, embedding_dim)`` vector, which the loss and the metrics compare by cosine similarity, so every part
    counts in proportion to its share of the vector.

    Separate towers let each band learn its own features (head, torso, legs), as in the paper; the batch norm of
    the joined vector keeps any one part's scale from swamping the cosine.

    Args:
        in_channels: channels of the input images (3 for RGB).
        image_size: ``(H, W)`` of the input images; the bands are laid out for ``H``.
        parts: number of horizontal bands.
        part_height: rows of each band.
        channels: output channels of each tower's blocks (conv3x3, batch norm, ReLU, 2x2 max-pool).
        embedding_dim: size of the joined embedding, a multiple of ``parts``.
        share_weights: one tower for all bands instead of one per band.
        dropout: dropout before each tower's linear head.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: tuple[int, int] = (128, 48),
        parts: int = 3,
        part_height: int = 48,
        channels: Sequence[int] = (32, 64, 128, 128),
        embedding_dim: int = 192,
        share_weights: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.rows = part_rows(image_size[0], parts, part_height)
        if embedding_dim % parts:
            raise ValueError(f"`embedding_dim` must be a multiple of `parts` ({parts}), got {embedding_dim}")
        towers = 1 if share_weights else parts
        self.towers = nn.ModuleList(
            ConvEmbedder(in_channels, embedding_dim // parts, channels, dropout) for _ in range(towers)
        )
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.image_size = tuple(image_size)
        self.part_height = part_height

    def forward(self, images: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` images of ``image_size`` to ``(N, embedding_dim)`` embeddings."""
        if images.shape[2:] != self.image_size:
            raise ValueError(
                f"`images` must be {self.image_size[0]}x{self.image_size[1]} (the `image_size` the parts are laid "
                f"out for), got shape {tuple(images.shape)}"
            )
        features = [
            self.towers[i % len(self.towers)](images[:, :, top : top + self.part_height])
            for i, top in enumerate(self.rows)
        ]
        return self.norm(torch.cat(features, dim=1))

"""Embedding networks: small CNNs that train from scratch on CPU, and any timm backbone with a pooling and a head."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import safetensors.torch
import timm
import torch
from torch import Tensor, nn

from lit_metric.functional._checks import check_positive_int
from lit_metric.hparams import RecordsArguments

__all__ = ["BackboneEmbedder", "ConvEmbedder", "GeM", "PartEmbedder", "load_state_dict_file", "part_rows"]


class ConvEmbedder(RecordsArguments, nn.Module):
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
    check_positive_int("parts", parts)
    if not 1 <= part_height <= height:
        raise ValueError(f"`part_height` must be in [1, {height}] for images {height} rows high, got {part_height}")
    if parts * part_height < height:
        raise ValueError(
            f"`parts` x `part_height` must cover the image's {height} rows, got {parts} x {part_height}; raise either"
        )
    if parts == 1:
        return [0]
    return [round(i * (height - part_height) / (parts - 1)) for i in range(parts)]


class PartEmbedder(RecordsArguments, nn.Module):
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


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018): ``mean(x^p)^(1/p)`` over the positions of each channel.

    ``p`` is learned; ``p = 1`` is average pooling and a large ``p`` approaches max pooling. Features are clamped at
    ``eps`` first, as the power of a negative number has no real value: GeM suits the non-negative maps of CNNs.

    Args:
        p: the initial exponent, ``> 0``.
        eps: the smallest feature value pooled.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"`gem_p` must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C, H, W)`` feature maps to ``(N, C)`` pooled features."""
        # In float32: cubes of half-precision features overflow beyond 65504.
        pooled = features.float().clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1 / self.p).to(features.dtype)


class BackboneEmbedder(RecordsArguments, nn.Module):
    """Any timm model, pooled and projected to an embedding: ``backbone -> pooling -> head``.

    The backbone is ``timm.create_model(name, num_classes=0, global_pool="")``: the model without its classifier
    and pooling. Its weights come from the network (``pretrained``), from a file (``weights``), or are random.
    Training and evaluation see the same vector, the head's output, which the criterion and the retrieval metrics
    compare by cosine similarity:

    - ``"bnneck"``: a linear map to ``embedding_dim`` then ``BatchNorm1d`` (the BNNeck of Luo et al. 2019), which
      normalises with the batch's statistics in training and with its running statistics in evaluation;
    - ``"linear"``: a linear map to ``embedding_dim``;
    - ``"none"``: the pooled backbone features themselves (``num_features`` of them).

    :attr:`preprocessing` says how images must be prepared: RGB (``channels`` 3), ``image_size``, ``mean`` and
    ``std``, from timm's pretrained config of the model. The image data modules take what their config leaves
    unset from it, and the checkpoint records it.

    Args:
        name: a timm model name, e.g. ``"resnet50"``, ``"resnet50.a1_in1k"`` or ``"vit_small_patch16_224"``.
        pretrained: download the pretrained weights (timm, from the Hugging Face Hub); needs network access.
        weights: a local ``.pt``/``.pth`` state dict or ``.safetensors`` file of the backbone, for machines without
            network access, e.g. saved with ``torch.save(timm.create_model(name).state_dict(), path)``; the
            classifier's entries, if any, are ignored.
        embedding_dim: size of the embedding with a ``"bnneck"`` or ``"linear"`` head; with ``"none"``, ``None``
            or the backbone's ``num_features``.
        pooling: ``"avg"`` (global average) or ``"gem"`` (:class:`GeM`) over the feature map, or over the tokens
            of a transformer.
        gem_p: initial exponent of GeM pooling.
        head: ``"bnneck"``, ``"linear"`` or ``"none"``, see above.
        image_size: ``(H, W)`` of the input images, e.g. ``(256, 128)`` for people; ``None`` takes the pretrained
            config's.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        embedding_dim: int | None = 512,
        pooling: Literal["avg", "gem"] = "avg",
        gem_p: float = 3.0,
        head: Literal["bnneck", "linear", "none"] = "bnneck",
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            hint = f"; close names: {close}" if close else ""
            raise ValueError(f"`name` {name!r} is not a timm model{hint} (timm.list_models() lists them all)")
        if pretrained and weights is not None:
            raise ValueError("give `pretrained: true` or a `weights` file, not both: both would set the weights")
        if pooling not in ("avg", "gem"):
            raise ValueError(f"`pooling` must be 'avg' or 'gem', got {pooling!r}")
        if head not in ("bnneck", "linear", "none"):
            raise ValueError(f"`head` must be 'bnneck', 'linear' or 'none', got {head!r}")
        self.backbone = _create_backbone(name, pretrained)
        if weights is not None:
            _load_backbone_weights(self.backbone, weights)
        features = self.backbone.num_features
        self.pool = GeM(gem_p) if pooling == "gem" else None
        self.head, self.embedding_dim = _head(head, features, embedding_dim)
        config = timm.data.resolve_model_data_config(self.backbone)
        channels, *size = config["input_size"]
        self.preprocessing = {
            "channels": channels,
            "image_size": list(image_size if image_size is not None else size),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
        }

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` images to ``(N, embedding_dim)`` embeddings."""
        channels = self.preprocessing["channels"]
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(f"`images` must have shape (N, {channels}, H, W), got shape {tuple(images.shape)}")
        features = self.backbone(images)
        if features.ndim == 3:
            # Transformer tokens (N, L, C): pooled over the L tokens as over the positions of a map.
            features = features.transpose(1, 2).unsqueeze(-1)
        elif getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)
        pooled = self.pool(features) if self.pool is not None else features.mean(dim=(2, 3))
        return self.head(pooled)


def _create_backbone(name: str, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    except OSError as error:
        # Hub, socket and file errors are all OSErrors; without network access their stack says little.
        raise OSError(
            f"`pretrained`: the weights of {name!r} could not be downloaded ({error}). Without network access, "
            "download them on a machine with it, e.g. torch.save(timm.create_model(name, pretrained=True)"
            ".state_dict(), 'weights.pt'), and give that file as `weights:` with `pretrained: false`"
        ) from None


def _head(head: str, features: int, embedding_dim: int | None) -> tuple[nn.Module, int]:
    """The head module and the embedding size it gives."""
    if head == "none":
        if embedding_dim not in (None, features):
            raise ValueError(
                f"`embedding_dim` must be None or the backbone's {features} features with head 'none', which "
                f"embeds by the pooled features, got {embedding_dim}"
            )
        return nn.Identity(), features
    if embedding_dim is None or embedding_dim < 1:
        raise ValueError(f"`embedding_dim` must be a positive integer with head {head!r}, got {embedding_dim}")
    if head == "linear":
        return nn.Linear(features, embedding_dim), embedding_dim
    # No bias before the batch norm: its shift would cancel it.
    return nn.Sequential(nn.Linear(features, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim)), embedding_dim


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pt``/``.pth`` state dict (loaded with ``weights_only``) or ``.safetensors`` file.

    Raises:
        FileNotFoundError: naming ``weights`` when the file is missing.
        ValueError: naming ``weights`` when the file has another extension or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`weights` file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        state = safetensors.torch.load_file(str(path))
    elif path.suffix in (".pt", ".pth"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"`weights` must be a .pt, .pth or .safetensors file, got {str(path)!r}")
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise ValueError(f"`weights` file {str(path)!r} must hold a state dict: parameter names to tensors")
    return state


def _load_backbone_weights(backbone: nn.Module, path: str | Path, shown: int = 5) -> None:
    """Load a weights file into ``backbone``, naming the first ``shown`` mismatched keys and shapes."""
    state = load_state_dict_file(path)
    # A file saved from the whole timm model also holds its classifier, which the backbone does not have.
    classifier = backbone.pretrained_cfg.get("classifier")
    if classifier:
        state = {key: value for key, value in state.items() if not key.startswith(f"{classifier}.")}
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key}: {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = [
        f"{len(found)} {kind}: {found[:shown]}{' ...' if len(found) > shown else ''}"
        for kind, found in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if found
    ]
    if problems:
        raise ValueError(
            f"`weights` file {str(path)!r} does not fit the backbone {backbone.pretrained_cfg['architecture']!r}: "
            + "; ".join(problems)
        )
    backbone.load_state_dict(state)

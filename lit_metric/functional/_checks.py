"""Argument checks shared by the functional core: each raises a ValueError that names the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_matrix(name: str, x: Tensor, shape: str = "(N, D)") -> None:
    """``x`` is a non-empty, finite, floating-point 2-D tensor described by ``shape`` in the message."""
    check_floating(name, x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape {shape}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    check_finite(name, x)


def check_floating(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")


def check_finite(name: str, x: Tensor) -> None:
    """``x`` holds no NaN or inf; an empty ``x`` passes."""
    if x.numel() == 0:
        return
    # aminmax propagates NaN and is one pass, cheaper than isfinite(x).all() on a (B, R) matrix.
    low, high = torch.aminmax(x)
    if not (bool(low > float("-inf")) and bool(high < float("inf"))):
        raise ValueError(f"`{name}` must be finite, found NaN or inf")


def describe(value: object, attribute: Literal["dtype", "shape"] = "dtype") -> str:
    """A tensor's dtype or shape, or any other value's type, for messages about the wrong kind of argument."""
    if not isinstance(value, Tensor):
        return type(value).__name__
    return f"dtype {value.dtype}" if attribute == "dtype" else f"shape {tuple(value.shape)}"


def check_labels(name: str, labels: Tensor, shape: str = "(N,)") -> None:
    """``labels`` is a 1-D integer tensor (class labels, dataset indexes) described by ``shape`` in the message."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must have shape {shape}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"`{name}` must be an integer tensor, got dtype {labels.dtype}")


def check_bool(name: str, value: object, where: str = "") -> None:
    """``value`` is ``True`` or ``False``; ``where`` locates the argument in the message, e.g. a list entry."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}`{where} must be true or false, got {value!r}")


def check_positive_int(name: str, value: object, where: str = "") -> None:
    """``value`` is an int (not a bool) ``>= 1``; ``where`` locates the argument in the message, e.g. a list entry."""
    if not _is_positive_int(value):
        raise ValueError(f"`{name}`{where} must be a positive integer, got {value!r}")


def check_positive_ints(name: str, values: Sequence[object]) -> None:
    """``values`` is a non-empty sequence of ints (not bools) ``>= 1``, e.g. the cut-offs of retrieval metrics."""
    if not values or not all(map(_is_positive_int, values)):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive integers, got {values}")


def check_k(k: object, gallery_size: int) -> None:
    """``k`` is a number of neighbours that a gallery of ``gallery_size`` items holds: an int from 1 to its size."""
    check_positive_int("k", k)
    if k > gallery_size:
        raise ValueError(f"`k` must be between 1 and the gallery size {gallery_size}, got {k}")


def check_choice(name: str, value: str, choices: tuple[str, ...], where: str = "") -> None:
    """``value`` is one of ``choices``; ``where`` locates the argument in the message, e.g. a schedule entry."""
    if value not in choices:
        raise ValueError(f"`{name}`{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_real(name: str, value: object, positive: bool = False, where: str = "") -> None:
    """``value`` is a finite real number (not a bool), ``> 0`` if ``positive``; ``where`` locates the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        positive and value <= 0
    ):
        raise ValueError(f"`{name}`{where} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    # Losses compute in float32, where a larger value is inf, and inf times the 0 of a pair that does not count is NaN.
    if abs(value) > _FLOAT32_MAX:
        raise ValueError(f"`{name}`{where} must be within the float32 range (|x| <= {_FLOAT32_MAX:.4g}), got {value!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1

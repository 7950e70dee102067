"""Mining written out anchor by anchor and pair by pair, independently of the vectorised code, for the tests."""

from __future__ import annotations

from collections.abc import Callable

import torch


def loop_pairs(
    similarity: torch.Tensor,
    labels: list[int],
    reference_labels: list[int],
    itself: Callable[[int, int], bool],
    strategy: str,
    weighting: str,
    negative_cost: float = 1.0,
    margin: float = 0.1,
    k: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(B, R)`` M and W of anchors with ``labels`` against references with ``reference_labels``;
    ``itself(i, j)`` says whether reference ``j`` is anchor ``i`` itself (now or an earlier embedding of it), which
    is never a positive."""
    rows, cols = similarity.shape
    s = similarity.tolist()
    kept = {}  # (i, j) -> +1 positive / -1 negative
    for i in range(rows):
        positives = [j for j in range(cols) if reference_labels[j] == labels[i] and not itself(i, j)]
        negatives = [j for j in range(cols) if reference_labels[j] != labels[i]]
        if strategy == "hard":
            hardest_positive = min((s[i][j] for j in positives), default=None)
            hardest_negative = max((s[i][j] for j in negatives), default=None)
            negatives = [j for j in negatives if hardest_positive is not None and s[i][j] > hardest_positive - margin]
            positives = [j for j in positives if hardest_negative is not None and s[i][j] < hardest_negative + margin]
        elif strategy == "topk_negatives":
            negatives = sorted(negatives, key=lambda j: -s[i][j])[:k]
        kept.update({(i, j): 1 for j in positives})
        kept.update({(i, j): -1 for j in negatives})
    n_pos = sum(1 for v in kept.values() if v == 1)
    n_neg = sum(1 for v in kept.values() if v == -1)
    anchors = {i for i, _ in kept}
    m = torch.zeros(rows, cols, dtype=similarity.dtype)
    w = torch.zeros(rows, cols, dtype=similarity.dtype)
    for (i, j), sign in kept.items():
        m[i, j] = 1.0 if sign == 1 else -negative_cost
        if weighting == "balanced":
            w[i, j] = 1 / n_pos if sign == 1 else 1 / n_neg
        elif weighting == "uniform":
            w[i, j] = 1 / (n_pos + n_neg)
        else:
            same_kind = sum(1 for (a, _), v in kept.items() if a == i and v == sign)
            w[i, j] = 1 / same_kind / len(anchors)
    return m, w

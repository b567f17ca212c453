"""Reference answers and hidden test cases for the notebook-06 questions.

The grader imports this module inside the grading kernel (through
``Question.hidden_cases``); student notebooks never import it. It can be left out of a
student distribution: ``check`` only needs ``questions.py``.
"""

from __future__ import annotations

import torch

from vit_course.grading.questions import Case


def deletion_auc(curve: torch.Tensor) -> float:
    """Area under a deletion (or insertion) curve by the trapezoid rule, x in [0, 1].

    Args:
        curve: (steps+1,) scores after removing 0, 1/steps, …, 1 of the tokens.
    Returns:
        The area, a float.
    """
    curve = torch.as_tensor(curve, dtype=torch.float64)
    if curve.ndim != 1 or curve.numel() < 2:
        raise ValueError(f"curve must be 1-D with at least 2 points, got shape {tuple(curve.shape)}")
    steps = curve.numel() - 1
    return float(((curve[1:] + curve[:-1]) / 2).sum() / steps)


def grid_pointing_score(attribution: torch.Tensor, target_tile: int) -> float:
    """Share of positive attribution inside the target tile of a 2×2 grid.

    Args:
        attribution: (h, w) map, h and w even.
        target_tile: 0..3, row-major (0 top-left, 3 bottom-right).
    Returns:
        Positive attribution in the tile / total positive attribution; 0.0 when none is positive.
    """
    m = torch.as_tensor(attribution, dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] % 2 or m.shape[1] % 2:
        raise ValueError(f"attribution must be (h, w) with h and w even, got shape {tuple(m.shape)}")
    if target_tile not in (0, 1, 2, 3):
        raise ValueError(f"target_tile must be 0, 1, 2 or 3, got {target_tile!r}")
    positive = m.clamp(min=0)
    total = positive.sum()
    if total == 0:
        return 0.0
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(positive[row * h : (row + 1) * h, col * w : (col + 1) * w].sum() / total)


def q1_hidden_cases() -> list[Case]:
    """Curves of several lengths and shapes (seeded)."""
    g = torch.Generator().manual_seed(6001)
    curves = [
        ("random curve, 10 steps", torch.rand(11, generator=g, dtype=torch.float64)),
        ("random curve, 100 steps", torch.rand(101, generator=g, dtype=torch.float64)),
        ("monotone decreasing, 20 steps", torch.rand(21, generator=g, dtype=torch.float64).sort(descending=True).values),
        ("float32 curve, 7 steps", torch.rand(8, generator=g)),
        ("all zeros, 5 steps", torch.zeros(6, dtype=torch.float64)),
        ("rising then falling, 2 steps", torch.tensor([0.2, 0.9, 0.1], dtype=torch.float64)),
    ]
    return [Case(f"hidden: {name}", (curve,), deletion_auc(curve), rtol=1e-5, atol=1e-6) for name, curve in curves]


def q2_hidden_cases() -> list[Case]:
    """Random signed maps on a ViT-B/16 grid (14×14) and others, every tile (seeded)."""
    g = torch.Generator().manual_seed(6002)
    cases = []
    for tile in range(4):
        m = torch.randn(14, 14, generator=g, dtype=torch.float64)
        cases.append(Case(f"hidden: signed 14x14 map, tile {tile}", (m, tile), grid_pointing_score(m, tile)))
    m = torch.rand(8, 6, generator=g, dtype=torch.float64)
    cases.append(Case("hidden: positive 8x6 map, tile 2", (m, 2), grid_pointing_score(m, 2)))
    m = torch.zeros(14, 14)
    m[10, 12] = 3.0  # one hot spot in tile 3
    cases.append(Case("hidden: single hot spot, tile 3", (m, 3), 1.0))
    cases.append(Case("hidden: single hot spot, tile 0", (m.clone(), 0), 0.0))
    cases.append(Case("hidden: all zero map", (torch.zeros(6, 6), 1), 0.0))
    return cases

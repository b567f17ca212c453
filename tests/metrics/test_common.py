"""Tests for vit_course.metrics._common: token ranking, step counts and the batched forward engine.
"""

from __future__ import annotations

import pytest
import torch

import vit_course.metrics as M

from ._models import G, head_dtypes, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rank_tokens_breaks_ties_by_index():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 1.0]]])
    assert M.rank_tokens(maps).tolist() == [[1, 2, 0, 3]]
    assert M.rank_tokens(maps, descending=False).tolist() == [[0, 3, 1, 2]]


def test_token_counts_are_ceil():
    assert M.token_counts(3, 16) == [0, 6, 11, 16]
    assert M.token_counts(4, 16) == [0, 4, 8, 12, 16]
    assert M.token_counts(5, 3) == [0, 1, 2, 2, 3, 3]
    assert M.token_counts(16, 16) == list(range(17))


def test_curves_do_not_depend_on_batch_size_and_restore_train_mode():
    model = tiny_vit().train()
    x = torch.randn(4, 3, 32, 32)
    maps = torch.rand(4, 4, 4)
    a = M.deletion_curve(model, x, maps, steps=4, batch_size=1, progress=False)
    b = M.deletion_curve(model, x, maps, steps=4, batch_size=64, progress=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())


def test_bfloat16_precision_runs_forwards_in_bfloat16_and_stays_close():
    model = tiny_vit()
    seen = head_dtypes(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)
    full = M.deletion_curve(model, x, maps, steps=4, progress=False)
    assert set(seen) == {torch.float32}
    seen.clear()
    fast = M.deletion_curve(model, x, maps, steps=4, progress=False, precision="bfloat16")
    assert set(seen) == {torch.bfloat16}
    assert fast.dtype == torch.float32 and fast.shape == full.shape
    assert not torch.equal(fast, full)                  # really a different arithmetic ...
    assert (fast - full).abs().max() < 0.05             # ... giving nearly the same curve
    seen.clear()
    chef = M.perturbation_test(model, x, maps, [0, 1, 2], progress=False, precision="bfloat16")
    assert set(seen) == {torch.bfloat16} and chef["positive"].shape == (3, 10)
    with pytest.raises(ValueError, match=r"precision.*\['float32', 'bfloat16'\]"):
        M.insertion_curve(model, x, maps, progress=False, precision="float16")

"""Pure tensor functions of vit_course.explain.rollout, on matrices worked out by hand.

Several tests pin properties that jacobgil/vit-explain's code breaks, and restate that
code's arithmetic (``vit_rollout.py`` ``rollout()``, ``vit_grad_rollout.py``
``grad_rollout()``) on small tensors to show the difference: rows normalised without
keepdim (columns get divided), discard applied to batch element 0 only, and gradients
paired with the wrong layers (``VITAttentionGradRollout``'s backward hooks).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from vit_course.explain import (
    HEAD_FUSIONS,
    attention_entropy,
    attention_grid,
    attention_map,
    chain_layers,
    cls_row_to_grid,
    discard_lowest,
    fuse_heads,
    grad_rollout,
    normalize_maps,
    rollout,
    rollout_step,
    upsample,
)
from vit_course.runtime import set_seed


pytestmark = pytest.mark.usefixtures("one_thread")


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_attentions(B=3, L=4, H=3, T=10, seed=0) -> list[torch.Tensor]:
    set_seed(seed)
    return [torch.randn(B, H, T, T, dtype=torch.float64).mul(2).softmax(-1) for _ in range(L)]


# ----------------------------------------------------------------------------- fuse_heads
def test_fuse_heads_by_hand():
    attn = t([[[[0.2, 0.8], [0.6, 0.4]],
               [[0.4, 0.6], [1.0, 0.0]]]])                      # (1, 2 heads, 2, 2)
    assert torch.allclose(fuse_heads(attn, "mean"), t([[[0.3, 0.7], [0.8, 0.2]]]))
    assert torch.allclose(fuse_heads(attn, "max"), t([[[0.4, 0.8], [1.0, 0.4]]]))
    assert torch.allclose(fuse_heads(attn, "min"), t([[[0.2, 0.6], [0.6, 0.0]]]))


def test_fuse_heads_rejects_unknown_mode_and_lists_valid():
    with pytest.raises(ValueError, match=r"head_fusion must be one of \['mean', 'max', 'min'\]"):
        fuse_heads(torch.rand(1, 2, 3, 3), "median")
    with pytest.raises(ValueError, match=r"\(B, heads, T, T\)"):
        fuse_heads(torch.rand(2, 3, 3), "mean")


# ----------------------------------------------------------------------------- rollout_step
def test_rollout_step_normalises_rows_not_columns():
    # Rows of A + I sum to 1.6 and 1.4: dividing rows and dividing columns differ.
    fused = t([[[0.5, 0.1], [0.2, 0.2]]])
    expected = t([[[1.5 / 1.6, 0.1 / 1.6], [0.2 / 1.4, 1.2 / 1.4]]])
    got = rollout_step(fused)
    assert torch.allclose(got, expected)
    assert torch.allclose(got.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    # jacobgil/vit-explain vit_rollout.py rollout(): `a = (fused + I) / 2` then
    # `a / a.sum(dim=-1)` without keepdim divides column j by row j's sum: not this.
    a = (fused + torch.eye(2, dtype=torch.float64)) / 2
    theirs = a / a.sum(dim=-1)
    assert torch.allclose(theirs, t([[[1.5 / 1.6, 0.1 / 1.4], [0.2 / 1.6, 1.2 / 1.4]]]))
    assert not torch.allclose(theirs.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    assert not torch.allclose(got, theirs)


def test_vit_explain_row_sums_do_not_broadcast_for_a_batch():
    # The same line on a batch of 2 images with T = 3 tokens: (2, 3, 3) / (2, 3) fails.
    a = torch.rand(2, 3, 3)
    with pytest.raises(RuntimeError):
        a / a.sum(dim=-1)
    assert rollout_step(a).shape == (2, 3, 3)


def test_all_zero_matrix_gives_identity_not_nan():
    got = rollout_step(torch.zeros(2, 4, 4), discard_ratio=0.99)
    assert torch.isfinite(got).all()
    assert torch.equal(got, torch.eye(4).expand(2, 4, 4))


def test_rollout_with_discard_099_has_no_nan_and_rows_sum_to_one():
    R = rollout(random_attentions(), head_fusion="min", discard_ratio=0.99)
    assert torch.isfinite(R).all()
    assert torch.allclose(R.sum(-1), torch.ones(R.shape[:2], dtype=R.dtype))


# ----------------------------------------------------------------------------- discard
def test_discard_is_per_image_and_uses_each_images_own_values():
    fused = t([[[0.1, 0.2], [0.3, 0.4]],        # image 0: lowest off-[0,0] are 0.2, 0.3
               [[0.9, 0.05], [0.8, 0.01]]])     # image 1: lowest are 0.05, 0.01
    got = discard_lowest(fused, 0.5)            # floor(0.5 · 4) = 2 entries per image
    expected = t([[[0.1, 0.0], [0.0, 0.4]],
                  [[0.9, 0.0], [0.8, 0.0]]])
    assert torch.equal(got, expected)
    assert not torch.equal(got[1], fused[1])
    assert torch.equal(fused[1], t([[0.9, 0.05], [0.8, 0.01]]))   # input not modified
    # jacobgil/vit-explain on the same batch: image 0 loses the union of both images'
    # lowest flat indices ({0, 1} and {3, 1}, index 0 left out), image 1 loses nothing.
    theirs = _vit_explain_discard(fused, 0.5)
    assert torch.equal(theirs, t([[[0.1, 0.0], [0.3, 0.0]],
                                  [[0.9, 0.05], [0.8, 0.01]]]))
    assert not torch.equal(got, theirs)


def _vit_explain_discard(fused: torch.Tensor, ratio: float, keep_index_0: bool = True
                         ) -> torch.Tensor:
    """The discard of jacobgil/vit-explain, restated: vit_rollout.py rollout() (index 0
    left out of the list) or, with ``keep_index_0=False``, vit_grad_rollout.py
    grad_rollout() (that line commented out). The k = int(ratio · T²) lowest flat indices
    of *every* image go into one list, which is zeroed in image 0 only."""
    out = fused.clone()
    flat = out.view(out.shape[0], -1)
    lowest = flat.topk(int(flat.shape[-1] * ratio), dim=-1, largest=False).indices
    if keep_index_0:
        lowest = lowest[lowest != 0]
    flat[0, lowest.flatten()] = 0
    return out


def test_discard_equals_vit_explains_for_one_image_unless_cls_to_cls_is_lowest():
    set_seed(3)
    fused = torch.rand(1, 5, 5, dtype=torch.float64)
    fused[0, 0, 0] = 2.0                                    # [0, 0] not among the lowest
    for ratio in (0.2, 0.5, 0.9):
        assert torch.equal(discard_lowest(fused, ratio), _vit_explain_discard(fused, ratio))
    # [0, 0] the smallest entry: vit-explain's rollout() keeps it and zeroes one entry
    # fewer; its grad_rollout() zeroes [0, 0] too; here the next-lowest entry goes.
    fused[0, 0, 0] = 0.0
    k = int(0.2 * 25)
    assert (_vit_explain_discard(fused, 0.2) == 0).sum() == k                 # 1 + (k - 1)
    assert (_vit_explain_discard(fused, 0.2, keep_index_0=False) == 0).sum() == k
    assert _vit_explain_discard(fused, 0.2, keep_index_0=False)[0, 0, 0] == 0
    ours = discard_lowest(fused, 0.2)
    assert (ours == 0).sum() == k + 1 and ours[0, 0, 0] == fused[0, 0, 0]


def test_discard_never_touches_cls_to_cls():
    fused = t([[[0.01, 0.5], [0.6, 0.7]]])      # [0, 0] is the smallest entry
    got = discard_lowest(fused, 0.25)           # one entry goes: the 0.5, not the 0.01
    assert torch.equal(got, t([[[0.01, 0.0], [0.6, 0.7]]]))


def test_discard_count_is_floor_of_ratio_times_entries():
    set_seed(1)
    fused = torch.rand(2, 3, 3) + 0.1                       # all entries > 0
    for ratio, k in [(0.0, 0), (0.5, 4), (0.9, 8), (0.99, 8)]:
        got = discard_lowest(fused, ratio)
        assert ((got == 0).sum(dim=(1, 2)) == k).all(), (ratio, k)
        assert torch.equal(got[:, 0, 0], fused[:, 0, 0])
        for b in range(2):                                  # dropped ≤ kept (off [0, 0])
            off = torch.ones(3, 3, dtype=torch.bool)
            off[0, 0] = False
            dropped = fused[b][(got[b] == 0) & off]
            kept = fused[b][(got[b] != 0) & off]
            if k and kept.numel():
                assert dropped.max() <= kept.min()


@pytest.mark.parametrize("numpy_selection", [True, False])     # False: other devices' path
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_discard_matches_a_sorting_reference_for_all_ratios(numpy_selection, dtype, monkeypatch):
    # Reference: sort each matrix's entries other than [0, 0] and zero the k lowest.
    rollout_module = importlib.import_module("vit_course.explain.rollout")   # not the function
    monkeypatch.setattr(rollout_module, "NUMPY_SELECTION", numpy_selection)
    set_seed(2)
    fused = torch.rand(3, 5, 5, dtype=dtype)
    for ratio in [0.0, 0.04, 0.3, 0.48, 0.5, 0.52, 0.7, 0.95, 0.96, 0.999]:
        got = discard_lowest(fused, ratio)
        k = int(ratio * 25)
        for b in range(3):
            flat = fused[b].flatten().clone()
            order = flat[1:].argsort() + 1                    # skip entry 0 = [0, 0]
            flat[order[:k]] = 0
            assert torch.equal(got[b].flatten(), flat), (ratio, b)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_discard_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        rollout(random_attentions(), discard_ratio=ratio)


def test_discard_ratio_must_be_a_number():
    with pytest.raises(TypeError, match="discard_ratio"):
        discard_lowest(torch.rand(1, 3, 3), True)


# ----------------------------------------------------------------------------- rollout
def test_rollout_multiplies_later_layers_on_the_left():
    # One head, T = 2. Ã_0 = [[.5, .5], [0, 1]], Ã_1 = [[1, 0], [.5, .5]].
    A0 = t([[[[0.0, 1.0], [0.0, 1.0]]]])
    A1 = t([[[[1.0, 0.0], [1.0, 0.0]]]])
    R = rollout([A0, A1])
    assert torch.allclose(R, t([[[0.5, 0.5], [0.25, 0.75]]]))     # Ã_1 · Ã_0
    assert not torch.allclose(R, t([[[0.75, 0.25], [0.5, 0.5]]]))  # Ã_0 · Ã_1
    assert torch.allclose(rollout([A0, A1], start_layer=1), t([[[1.0, 0.0], [0.5, 0.5]]]))
    assert torch.allclose(rollout([A0, A1], start_layer=-1), rollout([A0, A1], start_layer=1))


def test_three_token_rollout_by_hand():
    # Uniform attention: Ã = (J/3 + I)/2 = 2/3 on the diagonal, 1/6 elsewhere, so
    # R = Ã·Ã has (2/3)² + 2·(1/6)² = 1/2 on the diagonal and 2·(2/3)(1/6) + (1/6)² = 1/4 off it.
    A = torch.full((1, 1, 3, 3), 1 / 3, dtype=torch.float64)
    expected = t([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]])
    assert torch.allclose(rollout([A, A]), expected)


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_rollout_rows_sum_to_one(fusion, ratio):
    atts = random_attentions()
    R = rollout(atts, head_fusion=fusion, discard_ratio=ratio)
    assert R.shape == (3, 10, 10)
    assert torch.allclose(R.sum(-1), torch.ones(3, 10, dtype=R.dtype))
    grads = [torch.randn_like(a) for a in atts]
    G = grad_rollout(atts, grads, head_fusion=fusion, discard_ratio=ratio)
    assert torch.allclose(G.sum(-1), torch.ones(3, 10, dtype=G.dtype))


def _cls_row_by_vector_chain(steps: list[torch.Tensor]) -> torch.Tensor:
    """Row 0 of Ã_last · … · Ã_first as a vector-matrix chain from the top (a reference)."""
    vec = steps[-1][:, 0].unsqueeze(1)                       # (B, 1, T)
    for a in reversed(steps[:-1]):
        vec = vec @ a
    return vec.squeeze(1)


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_cls_row_of_the_rollout_equals_a_vector_chain_over_the_steps(fusion):
    atts = random_attentions()
    grads = [torch.randn_like(a) for a in atts]
    for start in (0, 2):
        steps = [rollout_step(fuse_heads(a, fusion), 0.7) for a in atts[start:]]
        assert torch.allclose(_cls_row_by_vector_chain(steps),
                              rollout(atts, fusion, 0.7, start)[:, 0])
        assert torch.allclose(chain_layers(steps), rollout(atts, fusion, 0.7, start))
        steps = [rollout_step(fuse_heads(a * g, fusion).clamp(min=0), 0.7)
                 for a, g in zip(atts[start:], grads[start:])]
        assert torch.allclose(_cls_row_by_vector_chain(steps),
                              grad_rollout(atts, grads, fusion, 0.7, start)[:, 0])


def test_rollout_of_a_batch_equals_rollout_of_each_image():
    atts = random_attentions(B=4)
    R = rollout(atts, head_fusion="max", discard_ratio=0.8)
    for b in range(4):
        single = rollout([a[b:b + 1] for a in atts], head_fusion="max", discard_ratio=0.8)
        assert torch.allclose(R[b:b + 1], single)


def test_rollout_rejects_bad_arguments():
    atts = random_attentions()
    with pytest.raises(ValueError, match="start_layer must be in"):
        rollout(atts, start_layer=4)
    with pytest.raises(TypeError, match="non-empty list"):
        rollout(atts[0])
    with pytest.raises(ValueError, match="same shape"):
        rollout([atts[0], atts[1][:, :2]])
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        rollout(atts, head_fusion="sum")
    with pytest.raises(ValueError, match="layer by layer"):
        grad_rollout(atts, atts[:2])


# ----------------------------------------------------------------------------- grad rollout
def test_grad_rollout_pairs_each_gradient_with_its_own_layer():
    # Layer 0: A0 ⊙ G0 = [[1, -1], [0, 1]] → clamp → I → Ã0 = I.
    # Layer 1: A1 ⊙ G1 = [[0, 1], [1, 0]] → + I → all ones → Ã1 = [[.5, .5], [.5, .5]].
    A0 = t([[[[0.5, 0.5], [0.5, 0.5]]]])
    G0 = t([[[[2.0, -2.0], [0.0, 2.0]]]])
    A1 = t([[[[0.8, 0.2], [0.2, 0.8]]]])
    G1 = t([[[[0.0, 5.0], [5.0, 0.0]]]])
    R = grad_rollout([A0, A1], [G0, G1])
    assert torch.allclose(R, t([[[0.5, 0.5], [0.5, 0.5]]]))
    # Reversed pairing gives another matrix: jacobgil/vit-explain's VITAttentionGradRollout
    # appends gradients from register_backward_hook (last layer first) and grad_rollout()
    # zips them with the forward-ordered attentions.
    wrong = grad_rollout([A0, A1], [G1, G0])
    assert torch.allclose(wrong, t([[[2 / 7, 5 / 7], [5 / 7, 2 / 7]]]))
    assert not torch.allclose(R, wrong)


def test_grad_rollout_clamps_after_fusing_heads():
    # As jacobgil/vit-explain vit_grad_rollout.py grad_rollout(): mean over heads of A ⊙ G,
    # then negatives set to 0. Entry [0, 1]: head products +1.0 and -0.5 → mean 0.25
    # (kept). Clamping each head first (GAE's avg_heads) would give 0.5.
    A = t([[[[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]]])
    G = t([[[[0.0, 2.0], [0.0, 0.0]], [[0.0, -1.0], [0.0, 0.0]]]])
    R = grad_rollout([A], [G])
    assert torch.allclose(R, t([[[1 / 1.25, 0.25 / 1.25], [0.0, 1.0]]]))


# ----------------------------------------------------------------------------- readout
def test_cls_row_to_grid_drops_prefix_tokens_and_keeps_row_major_order():
    R = torch.zeros(1, 7, 7)
    R[0, 0] = torch.arange(7.0)                     # CLS row: prefix 0, patches 1..6
    got = cls_row_to_grid(R, (2, 3), num_prefix_tokens=1)
    assert torch.equal(got, torch.tensor([[[1.0, 2, 3], [4, 5, 6]]]))
    R2 = torch.arange(8.0).view(1, 8)               # DeiT-distilled: 2 prefix tokens
    assert torch.equal(cls_row_to_grid(R2, (2, 3), 2), torch.tensor([[[2.0, 3, 4], [5, 6, 7]]]))
    with pytest.raises(ValueError, match="needs 10"):
        cls_row_to_grid(R, (3, 3), 1)


def test_attention_map_one_head_or_fused():
    atts = random_attentions(B=2, L=3, H=2, T=5)
    assert torch.equal(attention_map(atts, layer=1, head=1), atts[1][:, 1])
    assert torch.allclose(attention_map(atts), atts[-1].mean(1))
    assert torch.allclose(attention_map(atts, layer=0, head_fusion="max"), atts[0].amax(1))
    with pytest.raises(ValueError, match=r"head must be in \[-2, 1\]"):
        attention_map(atts, head=2)
    with pytest.raises(ValueError, match="layer must be in"):
        attention_map(atts, layer=3)


def test_attention_grid_is_every_layer_and_head_cls_row():
    atts = random_attentions(B=2, L=3, H=2, T=1 + 6)
    grid = attention_grid(atts, (2, 3), 1)
    assert grid.shape == (2, 3, 2, 2, 3)
    assert torch.equal(grid[1, 2, 0], atts[2][1, 0, 0, 1:].view(2, 3))


def test_attention_entropy_orders_focused_before_spread():
    focused = torch.zeros(4, 4)
    focused[1, 2] = 1.0
    half = torch.zeros(4, 4)
    half[0, :2] = 1.0
    maps = torch.stack([torch.ones(4, 4), focused, half, torch.zeros(4, 4)])
    ent = attention_entropy(maps)
    assert torch.allclose(ent, torch.tensor([1.0, 0.0, 0.25, 1.0]))   # log 2 / log 16 = 0.25
    with pytest.raises(ValueError, match="non-negative"):
        attention_entropy(-maps)


# ----------------------------------------------------------------------------- upsample
def test_upsample_shapes_and_normalisation():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    up = upsample(maps, 8)
    assert up.shape == (2, 8, 8)
    assert torch.equal(upsample(maps, (4, 6), mode="nearest")[0, :2, :3], torch.zeros(2, 3))
    norm = upsample(maps, (4, 6), normalize=True)
    assert norm[0].min() == 0 and norm[0].max() == 1
    assert torch.equal(norm[1], torch.zeros(4, 6))                  # constant → zeros
    assert torch.equal(normalize_maps(maps)[0], maps[0] / 3)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        upsample(maps[0], 8)
    with pytest.raises(ValueError, match="size must be"):
        upsample(maps, 0)

"""vit_course.checks: each check accepts what it documents, converts as documented, and
refuses the rest with a message that names the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_course import checks as C


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-3, ValueError), (True, TypeError),
                                        (2.0, TypeError), ("4", TypeError)])
def test_positive_int_refuses(value, exc):
    with pytest.raises(exc, match=r"n must be a positive int, got .*; pass a count"):
        C.check_positive_int(value, "n", "pass a count")


def test_positive_and_nonnegative_int_accept():
    assert C.check_positive_int(3, "n") == 3
    assert C.check_nonnegative_int(0, "seed") == 0
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        C.check_nonnegative_int(-1, "seed")


def test_ratio_is_half_open_and_names_the_fix():
    assert C.check_ratio(0) == 0.0 and C.check_ratio(0.99) == 0.99
    with pytest.raises(ValueError, match=r"\[0, 1\).*1.0 would discard everything"):
        C.check_ratio(1.0)
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        C.check_ratio(-0.1)
    with pytest.raises(TypeError, match="float in"):
        C.check_ratio(False)


def test_choice_and_fusion_list_the_valid_values():
    assert C.check_fusion("max") == "max"
    with pytest.raises(ValueError, match=r"\['mean', 'max', 'min'\].*averages the heads"):
        C.check_fusion("median")
    with pytest.raises(ValueError, match=r"baseline must be one of \['blur', 'zero'\]"):
        C.check_choice(3, "baseline", ("blur", "zero"))


def test_index_checks_wrap_negative_indices_and_refuse_out_of_range():
    assert C.check_layer_index(-1, 12) == 11
    assert C.check_head_index(None, 4) is None and C.check_head_index(-4, 4) == 0
    with pytest.raises(ValueError, match=r"layer must be in \[-12, 11\] for a model with 12 layers"):
        C.check_layer_index(12, 12)
    with pytest.raises(ValueError, match="4 heads"):
        C.check_head_index(4, 4)
    with pytest.raises(TypeError, match="int index"):
        C.check_layer_index(1.0, 12)          # a float index is refused, not truncated


def test_fractions_and_channel_stats():
    assert C.check_fractions([0, 0.5]) == (0.0, 0.5)
    for bad in ([], [1.0], [-0.1]):
        with pytest.raises(ValueError, match=r"numbers in \[0, 1\)"):
            C.check_fractions(bad)
    like = torch.zeros(1, dtype=torch.float64)
    stats = C.channel_stats(0.5, 3, "mean", like)
    assert stats.shape == (1, 3, 1, 1) and stats.dtype == torch.float64
    with pytest.raises(ValueError, match="one per channel"):
        C.channel_stats([1, 2], 3, "mean", like)
    with pytest.raises(ValueError, match="std must be > 0"):
        C.channel_stats([1, 0, 1], 3, "std", like)


def test_images_checks_rank_dtype_channels_and_size():
    x = torch.zeros(2, 3, 32, 32)
    assert C.check_images(x, channels=3, image_size=(32, 32)) is x
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        C.check_images(x[0])
    with pytest.raises(TypeError, match=r"images.float\(\) / 255"):
        C.check_images(x.to(torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        C.check_images(x[:0])
    with pytest.raises(ValueError, match="3 channels.*convert to RGB"):
        C.check_images(torch.zeros(1, 1, 32, 32), channels=3)
    with pytest.raises(ValueError, match="must be 224x224.*resize"):
        C.check_images(x, image_size=(224, 224))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        C.check_images(torch.zeros(1, 3, 30, 32), patch_size=(8, 8))
    with pytest.raises(TypeError, match="torch.stack"):
        C.check_images([x])


def test_maps_checks_batch_grid_and_nan():
    images = torch.zeros(2, 3, 32, 32)
    assert C.check_maps(torch.zeros(2, 4, 4, dtype=torch.int64), images).dtype == torch.float32
    with pytest.raises(ValueError, match="one map per image"):
        C.check_maps(torch.zeros(3, 4, 4), images)
    with pytest.raises(ValueError, match="not upsampled maps"):
        C.check_maps(torch.zeros(2, 5, 5), images)
    with pytest.raises(ValueError, match="contains NaN"):
        C.check_maps(torch.full((2, 4, 4), float("nan")))


def test_attentions_accept_a_list_or_a_stack_and_refuse_ragged_layers():
    a = torch.rand(2, 1, 4, 5, 5)
    assert len(C.check_attentions(a)) == 2 and len(C.check_attentions(list(a))) == 2
    with pytest.raises(ValueError, match="same shape"):
        C.check_attentions([a[0], torch.rand(1, 4, 6, 6)])
    with pytest.raises(ValueError, match="square"):
        C.check_attentions([torch.rand(1, 4, 5, 6)])
    with pytest.raises(TypeError, match="Capture.attentions"):
        C.check_attentions([])


def test_targets_broadcast_range_check_and_refuse_bools():
    assert C.check_targets(None, 3) is None
    assert C.check_targets(2, 3).tolist() == [2, 2, 2]
    assert C.check_targets(torch.tensor(1), 2).tolist() == [1, 1]
    assert C.check_targets([0, 2, 1], 3, 3).tolist() == [0, 2, 1]
    assert C.check_targets(np.int64(1), 2).tolist() == [1, 1]          # NumPy ints are ints
    assert C.check_targets([np.int32(2), 0], 2, 3).tolist() == [2, 0]
    with pytest.raises(TypeError, match="bool"):
        C.check_targets(np.bool_(True), 2)
    with pytest.raises(TypeError, match="bool"):
        C.check_targets(True, 3)
    with pytest.raises(TypeError, match="int class indices"):
        C.check_targets([True, False], 2)      # not classes 1 and 0
    with pytest.raises(TypeError, match="integer class indices"):
        C.check_targets(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one class index per image"):
        C.check_targets([0, 1], 3)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 2\]"):
        C.check_targets(3, 2, 3)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert C.resolve_targets(None, logits).tolist() == [1, 0]
    assert C.resolve_targets(2, logits).tolist() == [2, 2]


def test_labels():
    assert C.check_labels([0, 2], 2, 3).tolist() == [0, 2]
    assert C.check_labels(torch.tensor([1]), 1).tolist() == [1]
    with pytest.raises(ValueError, match="one label per image"):
        C.check_labels([0], 2)
    with pytest.raises(TypeError, match="integer class indices"):
        C.check_labels([0.5, 1.0], 2)
    with pytest.raises(ValueError, match="out of range"):
        C.check_labels([0, 3], 2, 3)

"""vit_course.widgets_inside: the explorer's inside view follows the explorer's image and
layer, draws what the package computes, and makes one model pass per image (none per move of
layer, none for an image seen before)."""

from __future__ import annotations

import pytest
import torch

from _tiny import MODEL_KINDS, images, make_model
from vit_course.inside import layer_logits, record_inside, token_norms
from vit_course.widgets import AttentionExplorer
from vit_course.widgets_inside import InsideView

pytestmark = pytest.mark.usefixtures("one_thread")


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_view_follows_the_explorer_without_a_pass_per_move(kind):
    model, x = make_model(kind), images(3)
    explorer = AttentionExplorer(model, x, busy_after=60.0)
    view = InsideView(explorer)
    calls = count_forwards(model)
    first = view.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and view.forward_passes == 1
    explorer.controls["layer"].value = 0                      # a move: no model pass
    assert calls[0] == 0 and view.image.value != first and "after block 1" in view.caption.value
    explorer.controls["image"].value = 2       # a new image: the explorer's capture + one record
    assert calls[0] == 2 and view.forward_passes == 2
    explorer.controls["image"].value = 0                      # seen before: none
    assert calls[0] == 2 and sorted(view.records) == [0, 2]


def test_view_records_what_the_package_computes():
    model, x = make_model("course"), images(2)
    view = InsideView(AttentionExplorer(model, x, busy_after=60.0))
    norms, probs = view.record(1)
    cap = record_inside(model, x[1:2])
    P = cap.info.num_prefix_tokens
    assert torch.equal(norms, token_norms(model, capture=cap).norms[0, :, P:])
    assert torch.allclose(probs, layer_logits(model, cap)[0].softmax(-1))
    assert torch.allclose(probs[-1], model(x[1:2])[0].softmax(-1), atol=1e-5)


def test_bad_arguments_are_named():
    model = make_model("course")
    with pytest.raises(TypeError, match="AttentionExplorer"):
        InsideView(model)
    with pytest.raises(ValueError, match="threshold"):
        InsideView(AttentionExplorer(model, images(1), busy_after=60.0), threshold=1)

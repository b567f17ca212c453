"""Value zeroing (Mohebbi et al. 2023) against a brute-force loop over layers and tokens that
runs the models' own blocks with one token's value vectors zeroed by a hook."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _tiny import MODEL_KINDS, images, make_model
from vit_course.explain import describe_model, explain
from vit_course.explain.families import blocks_of
from vit_course.explain.value_zeroing import block_inputs, block_output, check_plain_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def _value_linear(model: nn.Module, layer: int) -> tuple[nn.Module, slice]:
    """The Linear whose output holds the values, and the slice of its features that is v."""
    blk = blocks_of(model)[layer]
    family = describe_model(model).family
    if family == "hf":
        return blk.attention.v_proj, slice(None)
    qkv = blk.msa_block.qkv if family == "vit_course" else blk.attn.qkv
    D = qkv.in_features
    return qkv, slice(2 * D, 3 * D)


def _run_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = blk(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def brute_force_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One block call per (layer, zeroed token), the paper's loop; returns (B, T) rows."""
    joint = None
    with torch.no_grad():
        for layer, (blk, h) in enumerate(zip(blocks_of(model), block_inputs(model, x))):
            T = h.shape[1]
            ref = _run_block(blk, h)                                  # (B, T, D)
            lin, cols = _value_linear(model, layer)
            C = torch.zeros(h.shape[0], T, T, dtype=h.dtype)
            for j in range(T):
                def zero_j(_m, _i, out, j=j):
                    out = out.clone()
                    out[:, j, cols] = 0
                    return out
                handle = lin.register_forward_hook(zero_j)
                try:
                    C[:, :, j] = 1 - F.cosine_similarity(_run_block(blk, h), ref, dim=-1)
                finally:
                    handle.remove()
            C = C / C.sum(-1, keepdim=True)
            joint = C if joint is None else C @ joint
    return joint[:, 0]


@pytest.mark.parametrize("kind", ["course", "timm", "timm_distilled", "hf"])
def test_value_zeroing_equals_the_brute_force_loop(kind):
    model = make_model(kind)
    x = images(2)
    info = describe_model(model)
    # the loop runs a float64 copy; the method recomputes layers in float64 from the
    # float32 model's recorded block inputs
    rows = brute_force_map(copy.deepcopy(model).double(), x.double())
    maps = explain(model, x, "value_zeroing")
    assert maps.shape == (2, 4, 4)
    assert torch.allclose(maps.flatten(1).double(), rows[:, info.num_prefix_tokens:],
                          atol=1e-6, rtol=1e-4)
    assert maps.std() > 0
    # the distances come from the changes themselves, so float32 keeps about 1e-6 of the
    # map (the direct 1 − cos of two recomputed float32 outputs kept about 1e-3)
    f32 = explain(model, x, "value_zeroing", precision="float32")
    assert (f32 - maps).abs().max() <= 1e-5 * maps.abs().max() and not torch.equal(f32, maps)
    # bfloat16: float32 with the MLP's large product in bfloat16, within 3e-3 of the map
    bf16 = explain(model, x, "value_zeroing", precision="bfloat16")
    assert (bf16 - maps).abs().max() <= 3e-3 * maps.abs().max() and not torch.equal(bf16, f32)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_recomputed_blocks_are_the_models_blocks_and_maps_batch_invariant(kind):
    model = make_model(kind)
    x = images(3)
    inputs = block_inputs(model, x)
    parts = check_plain_blocks(model, "test")
    heads = describe_model(model).num_heads
    with torch.no_grad():
        for blk, p, h, nxt in zip(blocks_of(model), parts, inputs, inputs[1:]):
            assert torch.allclose(block_output(p, h, heads), _run_block(blk, h), atol=1e-5)
            assert torch.allclose(_run_block(blk, h), nxt, atol=1e-6)   # inputs chain
    maps = explain(model, x, "value_zeroing")
    for b in range(3):
        assert torch.allclose(explain(model, x[b:b + 1], "value_zeroing")[0], maps[b], atol=1e-6)
    # target is checked and ignored (class-agnostic)
    assert torch.equal(explain(model, x, "value_zeroing", target=2), maps)
    with pytest.raises(ValueError):
        explain(model, x, "value_zeroing", target=7)


def test_rows_are_normalised_mixing_and_chunking_does_not_change_the_map(monkeypatch):
    import vit_course.explain.value_zeroing as vz
    model = make_model("torchvision")
    x = images(2)
    mats = vz.value_zeroing_matrices(model, x)
    for c in mats:
        assert torch.allclose(c.sum(-1), torch.ones(2, 17, dtype=c.dtype))
        assert (c >= -1e-6).all()
    top = vz.value_zeroing_matrices(model, x, top_rows=slice(0, 1))     # the class row only
    assert top[-1].shape == (2, 1, 17)
    assert torch.allclose(top[-1], mats[-1][:, :1], rtol=0, atol=1e-12)
    assert all(map(torch.equal, top[:-1], mats[:-1]))
    whole = explain(model, x, "value_zeroing")
    monkeypatch.setattr(vz, "CHUNK_ELEMENTS", 1)              # one zeroed token per pass
    assert torch.allclose(explain(model, x, "value_zeroing"), whole, atol=1e-6)


def test_works_inside_no_grad_and_refuses_unknown_options():
    model = make_model("course")
    with torch.no_grad():
        maps = explain(model, images(1), "value_zeroing")
    assert torch.isfinite(maps).all()
    with pytest.raises(TypeError, match="unknown option"):
        explain(model, images(1), "value_zeroing", layer=0)
    with pytest.raises(ValueError, match="bfloat16"):
        explain(model, images(1), "value_zeroing", precision="float16")

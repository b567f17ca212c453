"""Token-drop perturbation (issue 16): dropped tokens are exactly absent, for every family, and
a forward over fewer tokens costs fewer FLOPs."""

from __future__ import annotations

import pytest
import torch
from _tiny import MODEL_KINDS, images, make_model
from torch.utils.flop_counter import FlopCounterMode

from vit_course.explain.families import TokenDrop
from vit_course.metrics import deletion_curve, insertion_curve, perturbation_test
from vit_course.metrics._common import LogitCache, dropped_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _by_hand(kind, model, x, keep):
    """The model run on [prefix tokens, kept patch tokens] built without TokenDrop."""
    def select(seq, P):
        idx = keep.unsqueeze(-1).expand(-1, -1, seq.shape[-1])
        return torch.cat([seq[:, :P], seq[:, P:].gather(1, idx)], dim=1)
    if kind == "course":
        seq = torch.cat([model.class_embedding.expand(x.shape[0], -1, -1), model.patch_embedding(x)], 1)
        seq = select(seq + model.position_embedding, 1)
        for blk in model.transformer_encoder:
            seq = blk(seq)
        return model.head(model.norm(seq)[:, 0])
    if kind == "torchvision":
        seq = model._process_input(x)
        seq = torch.cat([model.class_token.expand(x.shape[0], -1, -1), seq], 1) + model.encoder.pos_embedding
        seq = model.encoder.ln(model.encoder.layers(select(seq, 1)))
        return model.heads(seq[:, 0])
    if kind.startswith("timm"):
        seq = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        seq = model.norm(model.blocks(select(seq, model.num_prefix_tokens)))
        return model.forward_head(seq)
    seq = select(model.vit.embeddings(x), 1)          # hf
    for layer in model.vit.layers:
        seq = layer(seq)
    return model.classifier(model.vit.layernorm(seq)[:, 0])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_token_drop_equals_the_shorter_sequence_built_by_hand(kind):
    model, x = make_model(kind), images(2)
    keep = torch.tensor([[0, 5, 6, 15], [3, 4, 9, 10]])
    with torch.no_grad(), TokenDrop(model) as drop:
        drop.keep = keep
        out = model(x)
        out = getattr(out, "logits", out)
        drop.keep = None
        full = getattr(model(x), "logits", model(x))
    with torch.no_grad():
        ref = _by_hand(kind, model, x, keep)
        plain = getattr(model(x), "logits", model(x))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full, plain, rtol=0, atol=0)     # keep=None: the ordinary forward
    assert not torch.allclose(out, plain)                       # dropping tokens changes the output


@pytest.mark.parametrize("kind", ["torchvision", "course"])
def test_dropped_patch_pixels_have_no_effect_at_all(kind):
    model, x = make_model(kind), images(1)
    y = x.clone()
    y[:, :, 8:16, 0:8] = torch.randn(3, 8, 8) * 5       # token 4 (row 1, col 0) changed
    keep = torch.tensor([[0, 1, 2, 3, 5, 6, 7, 8]])       # token 4 dropped
    with torch.no_grad(), TokenDrop(model) as drop:
        drop.keep = keep
        assert torch.equal(model(x), model(y))
        drop.keep = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])   # token 4 kept: it matters
        assert not torch.equal(model(x), model(y))


def test_flops_per_forward_fall_with_the_tokens_kept():
    model, x = make_model("torchvision"), images(1)
    flops = []
    with torch.no_grad(), TokenDrop(model) as drop:
        for k in (16, 12, 8, 4, 0):
            drop.keep = torch.arange(k).view(1, k)
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops.append(counter.get_total_flops())
    assert all(a > b for a, b in zip(flops, flops[1:])), flops
    # above the class-token-only forward (patch embedding + 1 token), the cost is that of the
    # kept tokens: half the tokens, at most half the cost (attention falls quadratically)
    half = (flops[2] - flops[4]) / (flops[0] - flops[4])
    assert 0.4 < half <= 0.5, flops


def test_deletion_insertion_chefer_with_token_drop_match_a_loop():
    model, x = make_model("course"), images(2)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))
    dele = deletion_curve(model, x, maps, steps=4, baseline="token_drop", progress=False)
    ins = insertion_curve(model, x, maps, steps=4, baseline="token_drop", progress=False)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    with torch.no_grad():
        probs = model(x).softmax(-1)
        t = probs.argmax(1)
        for b in range(2):
            for s, n in enumerate([0, 4, 8, 12, 16]):
                for curve, keep in ((dele, order[b, n:]), (ins, order[b, :n])):
                    with TokenDrop(model) as drop:
                        drop.keep = keep.sort().values.view(1, -1)
                        p = model(x[b:b + 1]).softmax(-1)[0, t[b]]
                    torch.testing.assert_close(curve[b, s], p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dele[:, 0], probs.gather(1, t.view(-1, 1))[:, 0])
    res = perturbation_test(model, x, maps, baseline="token_drop", progress=False)
    assert res["positive"].shape == (2, 10) and torch.equal(res["positive"][:, 0], torch.ones(2, dtype=torch.float64))


def test_dropped_logits_run_each_kept_count_once_and_count_forwards():
    model, x = make_model("torchvision"), images(3)
    keep = torch.zeros(3, 3, 16, dtype=torch.bool)
    keep[:, 0] = True                  # full: the clean logits from the cache
    keep[:, 1, :5] = True              # 5 tokens
    cache = LogitCache()
    out = dropped_logits(model, x, keep, batch_size=8, progress=False, desc="t", cache=cache)
    assert out.shape == (3, 3, 3)
    assert cache.forwards == 3 + 6     # clean once, then 2 short rows per image
    torch.testing.assert_close(out[:, 0], model(x).detach())
    # no patch token left: only the class token + its position embedding, the same for every image
    torch.testing.assert_close(out[0, 2], out[1, 2])
    again = dropped_logits(model, x, keep, batch_size=8, progress=False, desc="t", cache=cache)
    assert cache.forwards == 3 + 6 and torch.equal(again, out)   # every row from the cache


def test_a_kept_set_two_curves_share_runs_once_and_gives_the_same_numbers():
    """Chefer's test removes floor(f·N) tokens, f = 0.1 … 0.9. Negative keeps the top
    N - floor(f·N) = ceil((1-f)·N) tokens: an insertion step of a 20-step curve for every N.
    Positive keeps all but the top floor(f·N): a deletion step (ceil(k·N/20)) where the two
    roundings meet, which at N = 16 is every f (at N = 196 only f = 0.5). So after deletion and
    insertion, one suite cache runs no new forward for Chefer's test here, and its numbers are
    those of a cache of its own."""
    from vit_course.metrics.perturbation import _chefer_curves, _curve
    model, x = make_model("course"), images(2)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(5))   # no ties
    shared, alone = LogitCache(), LogitCache()
    t = model(x).argmax(1).detach()
    for insertion in (False, True):
        _curve(model, x, maps, t, 20, "token_drop", 64, False, insertion=insertion, cache=shared)
    before = shared.forwards
    ch = _chefer_curves(model, x, maps, None, (0,) * 3, (1,) * 3, 64, False, cache=shared, baseline="token_drop")
    ref = _chefer_curves(model, x, maps, None, (0,) * 3, (1,) * 3, 64, False, cache=alone, baseline="token_drop")
    assert shared.forwards == before
    assert alone.forwards == 2 + 2 * 18                      # clean, then 9 + 9 rows per image
    assert torch.equal(ch["negative"], ref["negative"]) and torch.equal(ch["positive"], ref["positive"])


def _row_by_row(model, x, keep):
    """Each (image, step) of keep (B, S, N) through TokenDrop alone: the reference."""
    out = torch.empty(*keep.shape[:2], 3)
    with torch.no_grad(), TokenDrop(model) as drop:
        for b in range(keep.shape[0]):
            for s in range(keep.shape[1]):
                drop.keep = keep[b, s].nonzero().view(1, -1)
                y = model(x[b:b + 1])
                out[b, s] = getattr(y, "logits", y)[0]
    return out


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one-length-per-forward"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_dropped_logits_of_mixed_lengths_equal_each_shorter_sequence_alone(kind, packed, monkeypatch):
    """Rows keeping 0 … 16 tokens, several lengths per forward pass (packed: one pass over the
    weights for all of them; otherwise one pass per length) give each row's own logits."""
    import vit_course.metrics._common as common
    model, x = make_model(kind), images(2)
    assert common.packable(model)                          # every tiny kind has plain blocks
    if not packed:
        monkeypatch.setattr(common, "packable", lambda m: False)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(2, 6, 16, generator=g) < torch.tensor([0.0, 0.1, 0.3, 0.5, 0.8, 1.0]).view(1, 6, 1)
    keep[:, 5] = True                                      # full: the clean logits
    out = dropped_logits(model, x, keep, batch_size=5, progress=False, desc="t", cache=LogitCache())
    torch.testing.assert_close(out, _row_by_row(model, x, keep), rtol=1e-5, atol=1e-5)


def test_packing_is_used_where_the_blocks_are_plain_only():
    from vit_course.metrics.packing import packable
    assert packable(make_model("torchvision")) and packable(make_model("course"))
    timm = pytest.importorskip("timm")
    scaled = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3, init_values=0.1)
    assert not packable(scaled)                            # layer scale: the ordinary forward
    pooled = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3, global_pool="avg")
    assert not packable(pooled)                            # the head reads every token
    keep = torch.rand(1, 3, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    out = dropped_logits(scaled.eval(), images(1), keep, batch_size=4, progress=False, desc="t", cache=LogitCache())
    torch.testing.assert_close(out, _row_by_row(scaled.eval(), images(1), keep), rtol=1e-5, atol=1e-5)


def test_token_drop_refuses_models_without_a_family():
    with pytest.raises(TypeError, match="explanations support"):
        deletion_curve(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)),
                       images(1), torch.rand(1, 4, 4), steps=4, baseline="token_drop", progress=False)


def test_run_suite_with_token_drop_drops_tokens_in_chefer_too():
    from functools import partial

    from vit_course.explain import explain
    from vit_course.metrics import run_suite
    model, x = make_model("course"), images(3)
    labels = model(x).argmax(1).detach()
    fn = partial(explain, method="rollout")
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    res = run_suite(model, x, labels, {"rollout": fn}, steps=4, baseline="token_drop", controls=(),
                    grid_game=False, progress=False)
    handle.remove()
    # every image the metrics ran is one of the clean images: nothing painted, black or blurred
    assert seen and all(any(torch.equal(img, c) for c in x) for batch in seen for img in batch)
    maps = res.maps["rollout"]
    ref = perturbation_test(model, x, maps, labels, baseline="token_drop", progress=False)
    assert torch.equal(res.curves["rollout"]["chefer_positive"], ref["positive"])
    torch.testing.assert_close(res.curves["rollout"]["deletion"],
                               deletion_curve(model, x, maps, steps=4, baseline="token_drop", progress=False))

"""vit_course.pretrained / standin / download: builder, freezing, stand-in detection,
offline errors, the feature cache, head training and the saved head.

ViT-B/16 is built from the stand-in cache once per module (plus once to test loading a
saved head); everything else runs on a tiny torchvision ViT (image 32, patch 8, width 32).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import ViT_B_16_Weights

from vit_course import engine, pretrained
from vit_course.data import create_dataloaders, simple_transform
from vit_course.pretrained import (
    WeightsUnavailableError,
    build_pretrained_vit,
    extract_features,
    train_head,
)
from vit_course.runtime import SEED

CLASSES = ("pizza", "steak", "sushi")
VIT_B16_FILE = "vit_b_16-c867db91.pth"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vit_b16(standin_torch_home_dir):
    """(model, transform, printed stdout) of build_pretrained_vit() on the stand-in cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(standin_torch_home_dir))
        mp.setattr(torch.hub, "_hub_dir", str(standin_torch_home_dir / "hub"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            model, transform = build_pretrained_vit()
    return model, transform, out.getvalue()


def _write_image_folder(root: Path, per_class: int, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = 200 + c * 20  # a class-dependent colour, so there is signal to learn
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture
def image_folders(tmp_path):
    train = _write_image_folder(tmp_path / "data" / "train", per_class=6, seed=0)
    test = _write_image_folder(tmp_path / "data" / "test", per_class=2, seed=1)
    return train, test


def _loaders(train, test, transform=None, batch_size=4):
    return create_dataloaders(train, test, transform or simple_transform(32), batch_size=batch_size)


class _ForwardCounter:
    """Counts encoder forward passes (every feature computation runs the encoder)."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handle = model.encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


# ----------------------------------------------------------------------------- builder


def test_builder_loads_standin_through_torchvision_cache(vit_b16, standin_torch_home_dir):
    model, transform, printed = vit_b16
    ckpt = standin_torch_home_dir / "hub" / "checkpoints" / VIT_B16_FILE
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # the backbone holds the cached file's tensors: torchvision's loading path really ran
    assert torch.equal(model.encoder.pos_embedding, state["encoder.pos_embedding"])
    assert torch.equal(model.conv_proj.weight, state["conv_proj.weight"])
    assert isinstance(model.heads, nn.Linear)
    assert (model.heads.in_features, model.heads.out_features) == (768, 3)
    assert transform.crop_size == [224] and transform.resize_size == [256]
    assert repr(transform) == repr(ViT_B_16_Weights.DEFAULT.transforms())
    info = model.pretrained_info
    assert info.weights == "ViT_B_16_Weights.IMAGENET1K_V1" and info.is_standin
    lines = [ln for ln in printed.splitlines() if "STAND-IN" in ln]
    assert len(lines) == 1 and "NOT the real pretrained" in lines[0], printed
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 3)


def test_builder_freezes_all_but_the_head(vit_b16):
    model, _, _ = vit_b16
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["heads.weight", "heads.bias"]
    counts = pretrained.frozen_trainable_counts(model)
    assert counts["trainable"] == 768 * 3 + 3
    assert counts["total"] == 86_567_656 - (768 * 1000 + 1000) + counts["trainable"]
    assert counts["frozen"] == counts["total"] - counts["trainable"]


def test_new_head_is_seeded_and_random(vit_b16):
    model, _, _ = vit_b16
    ref = pretrained.new_head(768, 3, SEED)
    assert torch.equal(model.heads.weight, ref.weight) and torch.equal(model.heads.bias, ref.bias)
    assert model.heads.weight.abs().sum() > 0  # not torchvision's zero init
    other = pretrained.new_head(768, 3, SEED + 1)
    assert not torch.equal(other.weight, ref.weight)


def test_builder_unfrozen_and_other_class_count(standin_torch_home, capsys):
    model, _ = build_pretrained_vit(ViT_B_16_Weights.IMAGENET1K_V1, num_classes=5, freeze=False)
    assert model.heads.out_features == 5
    assert all(p.requires_grad for p in model.parameters())
    assert capsys.readouterr().out.count("STAND-IN") == 1


def test_new_head_rejects_bad_class_count():
    with pytest.raises(ValueError, match="num_classes"):
        pretrained.new_head(768, 0)


# ----------------------------------------------------------------------------- offline


def test_offline_error_names_file_folder_and_command(offline_torch_home):
    assert pretrained.weights_status() == "missing"
    with pytest.raises(WeightsUnavailableError) as info:
        build_pretrained_vit()
    message = str(info.value)
    folder = offline_torch_home / "hub" / "checkpoints"
    assert VIT_B16_FILE in message
    assert str(folder) in message
    assert "python -m vit_course.download --all" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)  # chained, not swallowed
    assert list(folder.iterdir()) == []  # nothing half-written


def test_timm_name_without_timm_says_how_to_install():
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed; the missing-timm message cannot be tested")
    with pytest.raises(ImportError, match=r"pip install -e \.\[timm\]"):
        build_pretrained_vit(arch="deit_tiny_patch16_224")


# ----------------------------------------------------------------------------- features


def test_cls_features_are_what_the_head_sees(tiny_tv_vit):
    model = tiny_tv_vit()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        feats = pretrained.cls_features(model, x)
        assert feats.shape == (5, 32)
        assert torch.allclose(model.heads(feats), model(x), atol=1e-6)


def test_feature_cache_miss_then_hit(tiny_tv_vit, image_folders, tmp_path):
    model = tiny_tv_vit()
    train_dl, _, _ = _loaders(*image_folders)
    cache = tmp_path / "cache"
    counter = _ForwardCounter(model)
    feats, labels = extract_features(model, train_dl, cache_dir=cache, progress=False)
    assert counter.calls == 5  # 18 images in batches of 4
    assert feats.shape == (18, 32) and feats.dtype == torch.float32
    # dataset order, although the training loader shuffles
    assert labels.tolist() == train_dl.dataset.targets
    with torch.no_grad():
        direct = pretrained.cls_features(model, train_dl.dataset.images)
    assert torch.allclose(feats, direct, atol=1e-5)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.partial"))

    counter.calls = 0
    feats2, labels2 = extract_features(model, train_dl, cache_dir=cache, progress=False)
    assert counter.calls == 0  # a hit does not run the model
    assert torch.equal(feats2, feats) and torch.equal(labels2, labels)


def _count_after(model, dl, cache):
    counter = _ForwardCounter(model)
    extract_features(model, dl, cache_dir=cache, progress=False)
    counter.handle.remove()
    return counter.calls


def test_feature_cache_invalidated_by_transform(tiny_tv_vit, image_folders, tmp_path):
    model, cache = tiny_tv_vit(), tmp_path / "cache"
    train_dl, _, _ = _loaders(*image_folders)
    assert _count_after(model, train_dl, cache) > 0
    from vit_course.data import imagenet_transform

    other_dl, _, _ = _loaders(*image_folders, transform=imagenet_transform(32))
    assert _count_after(model, other_dl, cache) > 0
    assert _count_after(model, other_dl, cache) == 0
    assert len(list(cache.glob("*.pt"))) == 2


def test_feature_cache_invalidated_by_data(tiny_tv_vit, image_folders, tmp_path):
    model, cache = tiny_tv_vit(), tmp_path / "cache"
    train, test = image_folders
    assert _count_after(model, _loaders(train, test)[0], cache) > 0
    victim = train / "steak" / "03.png"
    os.utime(victim, ns=(1, 1))  # touched, same bytes: same content, still a hit
    assert _count_after(model, _loaders(train, test)[0], cache) == 0
    Image.new("RGB", (40, 40), (1, 2, 3)).save(victim)  # replaced image: miss
    assert _count_after(model, _loaders(train, test)[0], cache) > 0
    (train / "sushi").rename(train / "tuna")  # renamed class (labels/class names): miss
    (test / "sushi").rename(test / "tuna")
    assert _count_after(model, _loaders(train, test)[0], cache) > 0
    loader = create_dataloaders(train, test, simple_transform(32), batch_size=4,
                                max_per_class=2)[0]  # fewer images: miss
    assert _count_after(model, loader, cache) > 0


def test_feature_cache_sees_transform_settings_hidden_from_repr(tiny_tv_vit, image_folders,
                                                               tmp_path):
    from torchvision import transforms

    model, cache = tiny_tv_vit(), tmp_path / "cache"

    def scaled(factor):
        return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                   transforms.Lambda(lambda x: x * factor)])

    assert repr(scaled(1.0)) == repr(scaled(0.5))  # the repr alone cannot tell them apart
    assert _count_after(model, _loaders(*image_folders, transform=scaled(1.0))[0], cache) > 0
    assert _count_after(model, _loaders(*image_folders, transform=scaled(0.5))[0], cache) > 0


def test_feature_cache_tensor_and_subset_datasets(tiny_tv_vit, tmp_path):
    from torch.utils.data import DataLoader, Subset, TensorDataset

    model, cache = tiny_tv_vit(), tmp_path / "cache"
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    ds = TensorDataset(x, y)
    assert _count_after(model, DataLoader(ds, batch_size=3), cache) > 0
    assert _count_after(model, DataLoader(TensorDataset(x.clone(), y), batch_size=3), cache) == 0
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1
    assert _count_after(model, DataLoader(TensorDataset(x2, y), batch_size=3), cache) > 0
    assert _count_after(model, DataLoader(Subset(ds, [0, 1, 2]), batch_size=3), cache) > 0
    feats, labels = extract_features(model, DataLoader(Subset(ds, [3, 4, 5]), batch_size=3),
                                     cache_dir=cache, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(feats, pretrained.cls_features(model, x[3:]))
    assert labels.tolist() == [0, 1, 2]


def test_feature_cache_invalidated_by_backbone_not_head(tiny_tv_vit, image_folders, tmp_path):
    model, cache = tiny_tv_vit(), tmp_path / "cache"
    train_dl = _loaders(*image_folders)[0]
    assert _count_after(model, train_dl, cache) > 0
    with torch.no_grad():
        model.heads.head.weight.add_(1.0)  # the head is not part of the features
    assert _count_after(model, train_dl, cache) == 0
    with torch.no_grad():
        model.encoder.layers[0].mlp[0].weight.add_(1e-3)  # changed backbone weights
    assert _count_after(model, train_dl, cache) > 0
    other = tiny_tv_vit(seed=1)  # different weights, same architecture
    assert _count_after(other, train_dl, cache) > 0


def test_damaged_cache_file_is_recomputed(tiny_tv_vit, image_folders, tmp_path):
    model, cache = tiny_tv_vit(), tmp_path / "cache"
    train_dl = _loaders(*image_folders)[0]
    feats, _ = extract_features(model, train_dl, cache_dir=cache, progress=False)
    (file,) = cache.glob("*.pt")
    file.write_bytes(b"garbage")
    again, _ = extract_features(model, train_dl, cache_dir=cache, progress=False)
    assert torch.allclose(again, feats)
    assert torch.load(file, weights_only=True)["features"].shape == feats.shape


def test_extract_features_without_cache_writes_nothing(tiny_tv_vit, image_folders, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("VIT_COURSE_ARTIFACTS", str(tmp_path / "artifacts"))
    model = tiny_tv_vit()
    extract_features(model, _loaders(*image_folders)[0], cache=False, progress=False)
    assert not (tmp_path / "artifacts" / "features").exists()


def test_unidentifiable_dataset_needs_data_key(tiny_tv_vit):
    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 32, 32), 0

    dl = torch.utils.data.DataLoader(Bare(), batch_size=2)
    with pytest.raises(TypeError, match="data_key"):
        extract_features(tiny_tv_vit(), dl, progress=False)


# ----------------------------------------------------------------------------- head training


def test_head_on_cached_features_equals_training_full_model(tiny_tv_vit, image_folders, tmp_path):
    """Same seed and batches: the head trained on features = the head of the whole model
    trained on images with its backbone frozen."""
    train, test = image_folders
    epochs, lr, bs = 3, 1e-2, 4

    # full model on images
    full = tiny_tv_vit()
    for p in full.parameters():
        p.requires_grad_(False)
    pretrained.attach_head(full, pretrained.new_head(32, 3, SEED))
    train_dl, test_dl, _ = _loaders(train, test, batch_size=bs)
    optimizer = torch.optim.Adam([p for p in full.parameters() if p.requires_grad], lr=lr)
    hist_full = engine.train(full, train_dl, test_dl, optimizer, nn.CrossEntropyLoss(), epochs,
                             "cpu", seed=SEED, progress=False)

    # head on cached features
    backbone = tiny_tv_vit()
    train_dl2, test_dl2, _ = _loaders(train, test, batch_size=bs)
    cache = tmp_path / "cache"
    xtr, ytr = extract_features(backbone, train_dl2, cache_dir=cache, progress=False)
    xte, yte = extract_features(backbone, test_dl2, cache_dir=cache, progress=False)
    head, hist_head = train_head(xtr, ytr, xte, yte, num_classes=3, epochs=epochs, lr=lr,
                                 batch_size=bs, seed=SEED, progress=False)

    assert not torch.equal(head.weight, pretrained.new_head(32, 3, SEED).weight)  # it trained
    torch.testing.assert_close(head.weight, full.heads.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.bias, full.heads.bias, rtol=1e-4, atol=1e-5)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.allclose(hist_head[key], hist_full[key], atol=1e-5), key

    pretrained.attach_head(backbone, head)
    with torch.no_grad():
        x = test_dl.dataset.images
        torch.testing.assert_close(backbone(x), full(x), rtol=1e-4, atol=1e-5)


def test_train_head_changes_with_seed():
    torch.manual_seed(0)
    x, y = torch.randn(20, 8), torch.arange(20) % 2
    a, _ = train_head(x, y, num_classes=2, epochs=2, seed=1, progress=False)
    b, _ = train_head(x, y, num_classes=2, epochs=2, seed=1, progress=False)
    c, hist = train_head(x, y, num_classes=2, epochs=2, seed=2, progress=False)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert len(hist["train_loss"]) == 2 and hist["test_loss"] == []


def test_train_head_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        train_head(torch.randn(4, 8), torch.zeros(3, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="both"):
        train_head(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.randn(2, 8),
                   num_classes=2)


def test_attach_head_checks_width(tiny_tv_vit):
    with pytest.raises(ValueError, match="features"):
        pretrained.attach_head(tiny_tv_vit(), nn.Linear(768, 3))


# ----------------------------------------------------------------------------- save / load


def test_save_and_load_head_round_trip(vit_b16, standin_torch_home, tmp_path, capsys):
    model, _, _ = vit_b16
    with torch.no_grad():
        model.heads.weight.mul_(3.0)  # a head different from a fresh one
    path = pretrained.save_head(model, tmp_path / "head.pt", class_names=list(CLASSES),
                                test_acc=0.5)
    assert path.stat().st_size < 100_000  # the head only, not the 330 MB backbone
    stored = torch.load(path, weights_only=True)
    assert set(stored["state_dict"]) == {"weight", "bias"}
    meta = stored["meta"]
    assert meta["stand_in"] is True and meta["weights"] == "ViT_B_16_Weights.IMAGENET1K_V1"
    assert meta["num_classes"] == 3 and meta["class_names"] == list(CLASSES)
    assert not list(tmp_path.glob("*.partial"))

    capsys.readouterr()
    loaded, transform, loaded_meta = pretrained.load_pretrained_classifier(path)
    assert capsys.readouterr().out.count("STAND-IN") == 1
    assert loaded_meta["class_names"] == list(CLASSES) and loaded_meta["test_acc"] == 0.5
    assert torch.equal(loaded.heads.weight, model.heads.weight)
    assert torch.equal(loaded.encoder.pos_embedding, model.encoder.pos_embedding)
    assert pretrained.frozen_trainable_counts(loaded)["trainable"] == 768 * 3 + 3
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_or_rebuild_classifier_rebuilds_without_a_head_then_loads_it(
        standin_torch_home, image_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIT_COURSE_ARTIFACTS", str(tmp_path / "artifacts"))   # feature cache
    train, test = image_folders
    head_path = tmp_path / "03_vit_b16_head.pt"
    model, _, names = pretrained.load_or_rebuild_classifier(head_path, train, test,
                                                            max_per_class=4, epochs=2)
    assert "03_vit_b16_head.pt not found: rebuilding" in capsys.readouterr().out
    assert not head_path.exists()                        # rebuilding saves nothing
    assert names == list(CLASSES)
    head = pretrained.head_of(model)
    assert head.out_features == 3
    assert not torch.equal(head.weight, pretrained.new_head(768, 3).weight)   # it was trained
    assert pretrained.frozen_trainable_counts(model)["trainable"] == 768 * 3 + 3

    pretrained.save_head(model, head_path, class_names=names)

    def no_training(*args, **kwargs):
        raise AssertionError("a saved head must be loaded, not retrained")

    monkeypatch.setattr(pretrained, "train_head", no_training)
    monkeypatch.setattr(pretrained, "extract_features", no_training)
    loaded, _, loaded_names = pretrained.load_or_rebuild_classifier(head_path, train, test)
    assert "rebuilding" not in capsys.readouterr().out
    assert loaded_names == names
    assert torch.equal(pretrained.head_of(loaded).weight, head.weight)

    pretrained.save_head(model, head_path)                 # a head saved without class names
    with pytest.raises(ValueError, match="holds no class_names; delete it and rerun notebook 03"):
        pretrained.load_or_rebuild_classifier(head_path, train, test)


def test_save_bare_head_needs_weights_name(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        pretrained.save_head(nn.Linear(768, 3), tmp_path / "h.pt")
    assert not list(tmp_path.iterdir())


def test_load_rejects_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="save_head"):
        pretrained.load_pretrained_classifier(other)
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        pretrained.load_pretrained_classifier(tmp_path / "absent.pt")


# ----------------------------------------------------------------------------- position embeddings


def test_position_embedding_similarity(tiny_tv_vit):
    model = tiny_tv_vit()
    sim = pretrained.position_embedding_similarity(model)
    assert sim.shape == (4, 4, 4, 4)
    idx = torch.arange(4)
    diag = sim[idx[:, None], idx[None, :], idx[:, None], idx[None, :]]
    torch.testing.assert_close(diag, torch.ones(4, 4))
    torch.testing.assert_close(sim, sim.permute(2, 3, 0, 1))  # symmetric
    assert sim.min() >= -1 - 1e-6 and not torch.allclose(sim, torch.ones_like(sim))

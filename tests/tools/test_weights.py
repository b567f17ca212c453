"""vit_course.tools.weights: weights names, the torch hub cache file, stand-in detection by hash."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torchvision.models import ViT_B_16_Weights

from vit_course.tools import weights


@pytest.mark.parametrize("bad, error", [("IMAGENET9K", ValueError),
                                        ("ViT_B_32_Weights.IMAGENET1K_V1", ValueError),
                                        (3, TypeError)])
def test_resolve_weights_rejects_bad_input(bad, error):
    with pytest.raises(error, match="weights"):
        weights.resolve_weights(bad, "vit_b_16")


def test_resolve_weights_accepts_enum_and_names():
    expected = ViT_B_16_Weights.IMAGENET1K_V1
    for given in (expected, "DEFAULT", "IMAGENET1K_V1", "ViT_B_16_Weights.IMAGENET1K_V1"):
        assert weights.resolve_weights(given) is expected


def test_weights_status(standin_torch_home, tmp_path):
    assert weights.weights_status() == "stand-in"
    data = b"pretend checkpoint"
    digest = hashlib.sha256(data).hexdigest()
    genuine = tmp_path / f"model-{digest[:8]}.pth"
    genuine.write_bytes(data)
    fake = tmp_path / "model-00000000.pth"
    fake.write_bytes(data)
    plain = tmp_path / "model.pth"
    plain.write_bytes(data)
    assert weights.checkpoint_status(genuine) == "genuine"
    assert weights.checkpoint_status(fake) == "stand-in"
    assert weights.checkpoint_status(plain) == "unverified"
    assert weights.checkpoint_status(tmp_path / "absent-12345678.pth") == "missing"


def test_file_hash_memo_sees_changed_content(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"a")
    first = weights.file_sha256(f)
    f.write_bytes(b"bb")
    assert weights.file_sha256(f) == hashlib.sha256(b"bb").hexdigest() != first


def test_atomic_torch_save_leaves_no_temp_file_on_interruption(tmp_path, monkeypatch):
    path = weights.atomic_torch_save({"x": torch.ones(2)}, tmp_path / "sub" / "f.pt")
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        weights.atomic_torch_save({"x": torch.zeros(2)}, path)
    assert path.read_bytes() == old and [p.name for p in path.parent.iterdir()] == ["f.pt"]

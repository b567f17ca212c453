"""Bad inputs to the training, pretrained, checkpoint, explorer, animation and figure code
(issue 13): each row is ``(id, call, exception type, regex that names the problem and the fix)``.

``call(ctx)`` gets a :class:`Ctx` with a tiny torchvision ViT, a shared explorer and a
temporary folder already holding the files the rows need (a folder named like a file, a
file in the way, damaged and hostile weight files). After every row the folder must hold
nothing new: no partial file, no ``.partial`` / ``.tmp`` left by a failed write.
"""

from __future__ import annotations

import errno
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from vit_course import animation, engine, pretrained, viz
from vit_course.widgets import AttentionExplorer, ExplanationCache

pytestmark = pytest.mark.usefixtures("one_thread")
NO_WEIGHTS_ONLY_FALSE = r"(?s)^(?!.*weights_only=False)"   # never suggest the unsafe load


def tiny(seed: int = 0, num_classes: int = 3) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=num_classes).eval()


def images(B: int = 2, bad: dict[int, float] | None = None) -> torch.Tensor:
    x = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for i, v in (bad or {}).items():
        x[i, 1, 3, 4] = v
    return x


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def explorer() -> AttentionExplorer:
    return AttentionExplorer(tiny(), images(2), ["a", "b", "c"])


@dataclass
class Ctx:
    tmp: Path
    model: nn.Module
    explorer: AttentionExplorer
    monkeypatch: pytest.MonkeyPatch

    def loader(self, x: torch.Tensor, y: torch.Tensor | None = None, bs: int = 2) -> DataLoader:
        return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long) if y is None
                                        else y), batch_size=bs)

    def train(self, loader, epochs: int = 1):
        opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        return engine.train(self.model, loader, None, opt, nn.CrossEntropyLoss(), epochs,
                            progress=False)

    def fail_torch_save(self):
        def partial_save(obj, f, *a, **k):
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        self.monkeypatch.setattr(torch, "save", partial_save)

    def fail_replace(self):
        def no_replace(src, dst):
            raise PermissionError(errno.EACCES, "Permission denied")
        self.monkeypatch.setattr(os, "replace", no_replace)


BARE_HEAD_META = {"weights": "ViT_B_16_Weights.IMAGENET1K_V1", "status": "stand-in"}


def _setup(tmp: Path) -> None:
    (tmp / "existing.pt").mkdir()                         # a folder named like a file
    (tmp / "existing.gif").mkdir()
    (tmp / "afile").write_text("not a folder")
    torch.save({"w": torch.zeros(64, 64)}, tmp / "good.pt")
    data = (tmp / "good.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp / "short.pt").write_bytes(data[:40])
    (tmp / "bytes.pt").write_bytes(b"not a checkpoint")
    torch.save({"format": "vit_course.checkpoint/1", "state_dict": {"a": Evil()}}, tmp / "evil.pt")
    torch.save({"format": pretrained.HEAD_FORMAT, "state_dict": Evil(), "meta": {}},
               tmp / "evil_head.pt")
    torch.save({"something": "else"}, tmp / "not_a_head.pt")
    state = {"weight": torch.zeros(5, 32), "bias": torch.zeros(5)}      # 5 classes, meta says 3
    meta = {"weights": "ViT_B_16_Weights.IMAGENET1K_V1", "arch": "vit_b_16", "num_classes": 3,
            "in_features": 32, "status": "stand-in"}
    torch.save({"format": pretrained.HEAD_FORMAT, "state_dict": state, "meta": meta}, tmp / "h5.pt")


ROWS = [
    # ------------------------------------------------------------------ engine: loaders
    ("train_empty_loader", lambda c: c.train([]), ValueError,
     r"yielded no images; check the dataset folder"),
    ("evaluate_empty_loader", lambda c: engine.evaluate(c.model, [], ["a", "b", "c"]),
     ValueError, r"yielded no images"),
    ("train_loader_of_strings", lambda c: c.train(["abc"]), TypeError,
     r"\(images tensor, labels.*create_dataloaders"),
    ("train_batch_of_lists", lambda c: c.train([([[0.0]], [0])]), TypeError,
     r"got \(list, \.\.\.\).*ToTensor"),
    ("train_float_labels", lambda c: c.train([(images(2), torch.tensor([0.0, 1.0]))]),
     TypeError, r"labels must hold integer class indices"),
    ("train_labels_out_of_range", lambda c: c.train([(images(2), torch.tensor([0, 7]))]),
     ValueError, r"out of range: the model has 3 classes \(valid 0\.\.2\)"),
    ("train_label_count", lambda c: c.train([(images(2), torch.tensor([0, 1, 2]))]),
     ValueError, r"one label per image \(2\)"),
    ("train_generator_two_epochs",
     lambda c: c.train((b for b in [(images(2), torch.tensor([0, 1]))]), epochs=2),
     TypeError, r"one-pass iterator.*pass a DataLoader or a list of batches"),
    ("train_nan_image", lambda c: c.train(c.loader(images(3, {1: float("nan")}), bs=3)),
     ValueError, r"images \[1\] .*NaN or inf.*repair or drop"),
    ("train_inf_image_second_batch",
     lambda c: c.train(c.loader(images(4, {3: float("inf")}), bs=2)), ValueError,
     r"images \[1\] \(index in the batch\)"),
    ("evaluate_nan_image",
     lambda c: engine.evaluate(c.model, c.loader(images(2, {0: float("nan")})), ["a", "b", "c"]),
     ValueError, r"images \[0\] .*NaN"),
    ("evaluate_float_labels",
     lambda c: engine.evaluate(c.model, [(images(2), torch.tensor([0.5, 1.0]))], ["a", "b", "c"]),
     TypeError, r"integer class indices"),
    ("evaluate_wrong_class_count",
     lambda c: engine.evaluate(c.model, c.loader(images(2)), ["a", "b"]), ValueError,
     r"expected \(B, 2\).*give the model a 2-class head"),
    ("predict_nan_image", lambda c: engine.predict(c.model, images(3, {2: float("nan")})),
     ValueError, r"images \[2\] .*NaN or inf"),
    ("predict_inf_single_image",
     lambda c: engine.predict(c.model, images(1, {0: float("-inf")})[0]), ValueError,
     r"images \[0\]"),
    ("predict_batch_size_zero", lambda c: engine.predict(c.model, images(2), batch_size=0),
     ValueError, r"batch_size must be a positive int"),
    ("predict_uint8_images",
     lambda c: engine.predict(c.model, (images(1) * 255).to(torch.uint8)), TypeError,
     r"floating point.*images\.float\(\) / 255"),
    ("predict_list", lambda c: engine.predict(c.model, [[0.0]]), TypeError,
     r"torch\.Tensor.*transform"),
    # ------------------------------------------------------------------ checkpoints
    ("checkpoint_onto_folder", lambda c: engine.save_checkpoint(c.model, c.tmp / "existing.pt"),
     IsADirectoryError, r"existing folder; pass a file path"),
    ("checkpoint_parent_is_file",
     lambda c: engine.save_checkpoint(c.model, c.tmp / "afile" / "sub" / "m.pt"),
     NotADirectoryError, r"afile is a file, not a folder; choose another path"),
    ("checkpoint_disk_full_midway",
     lambda c: (c.fail_torch_save(), engine.save_checkpoint(c.model, c.tmp / "new" / "m.pt")),
     OSError, r"could not save .*m\.pt \(No space left on device\); nothing was written\. "
              r"Free disk space"),
    ("checkpoint_rename_fails",
     lambda c: (c.fail_replace(), engine.save_checkpoint(c.model, c.tmp / "m.pt")),
     PermissionError, r"nothing was written.*choose a folder you can write to"),
    ("checkpoint_truncated", lambda c: engine.load_checkpoint(c.model, c.tmp / "truncated.pt"),
     ValueError, r"damaged or truncated.*delete it and train the model and save it"),
    ("checkpoint_random_bytes",
     lambda c: engine.load_checkpoint(c.model, c.tmp / "bytes.pt"), ValueError,
     NO_WEIGHTS_ONLY_FALSE + r".*damaged or truncated \(UnpicklingError: unreadable\); delete it"),
    ("checkpoint_40_bytes", lambda c: engine.load_checkpoint(c.model, c.tmp / "short.pt"),
     ValueError, r"damaged or truncated.*delete it"),
    ("checkpoint_with_pickled_code", lambda c: engine.load_checkpoint(c.model, c.tmp / "evil.pt"),
     ValueError, NO_WEIGHTS_ONLY_FALSE + r".*was refused.*posix\.system.*could run code"),
    ("checkpoint_missing", lambda c: engine.load_checkpoint(c.model, c.tmp / "nope.pt"),
     FileNotFoundError, r"no checkpoint at .*nope\.pt.*save_checkpoint\(model, path\)"),
    ("checkpoint_is_a_folder", lambda c: engine.load_checkpoint(c.model, c.tmp / "existing.pt"),
     FileNotFoundError, r"no checkpoint at .*existing\.pt"),
    # ------------------------------------------------------------------ pretrained
    ("head_onto_folder",
     lambda c: pretrained.save_head(nn.Linear(32, 3), c.tmp / "existing.pt", BARE_HEAD_META),
     IsADirectoryError, r"existing folder; pass a file path"),
    ("head_disk_full_midway",
     lambda c: (c.fail_torch_save(),
                pretrained.save_head(nn.Linear(32, 3), c.tmp / "h.pt", BARE_HEAD_META)),
     OSError, r"nothing was written\. Free disk space"),
    ("head_rename_fails",
     lambda c: (c.fail_replace(),
                pretrained.save_head(nn.Linear(32, 3), c.tmp / "h.pt", BARE_HEAD_META)),
     PermissionError, r"nothing was written"),
    ("head_5_classes_meta_3",
     lambda c: pretrained.load_pretrained_classifier(c.tmp / "h5.pt"),
     ValueError, r"shapes \{'weight': \(5, 32\), 'bias': \(5,\)\} but its metadata says "
                 r"num_classes=3.*delete it and train one in notebook 03"),
    ("head_truncated", lambda c: pretrained.load_pretrained_classifier(c.tmp / "truncated.pt"),
     ValueError, r"damaged or truncated.*delete it and train one in notebook 03"),
    ("head_with_pickled_code",
     lambda c: pretrained.load_pretrained_classifier(c.tmp / "evil_head.pt"), ValueError,
     NO_WEIGHTS_ONLY_FALSE + r".*was refused.*posix\.system"),
    ("head_wrong_format", lambda c: pretrained.load_pretrained_classifier(c.tmp / "not_a_head.pt"),
     ValueError, r"not a head saved by .*save_head.*train one in notebook 03"),
    ("head_missing", lambda c: pretrained.load_pretrained_classifier(c.tmp / "none.pt"),
     FileNotFoundError, r"no saved head at .*none\.pt; train one in notebook 03"),
    ("build_unknown_arch", lambda c: pretrained.build_pretrained_vit(arch="resnet18"),
     ValueError, r"not a ViT this course can build; use one of \['vit_b_16', 'vit_b_32'"),
    ("build_typo_arch", lambda c: pretrained.build_pretrained_vit(arch="vit_b_17"),
     (ValueError, ImportError), r"'vit_b_16'"),
    ("build_unknown_weights", lambda c: pretrained.build_pretrained_vit(weights="IMAGENET9K"),
     ValueError, r"not a weights entry of 'vit_b_16'; use one of \['DEFAULT', 'IMAGENET1K_V1'"),
    ("build_arch_not_str", lambda c: pretrained.build_pretrained_vit(arch=16), TypeError,
     r"arch must be a model name \(str\)"),
    ("attach_head_wrong_width", lambda c: pretrained.attach_head(c.model, nn.Linear(768, 3)),
     ValueError, r"head takes 768 features but .* has 32; build the head with nn\.Linear\(32, n\)"),
    ("attach_head_not_module", lambda c: pretrained.attach_head(c.model, torch.zeros(3, 32)),
     TypeError, r"head must be an nn\.Module"),
    ("extract_features_nan_image",
     lambda c: pretrained.extract_features(c.model, c.loader(images(2, {1: float("nan")})),
                                           cache=False, progress=False),
     ValueError, r"images \[1\] .*NaN"),
    ("features_cache_onto_file",
     lambda c: pretrained.extract_features(c.model, c.loader(images(2)), cache_dir=c.tmp / "afile",
                                           data_key="k", progress=False),
     NotADirectoryError, r"afile is a file, not a folder"),
    # ------------------------------------------------------------------ explorer
    ("explorer_discard_ratio_2", lambda c: c.explorer.set(discard_ratio=2.0), ValueError,
     r"discard_ratio must be in \[0, 1\), got 2\.0.*1\.0 would discard everything"),
    ("explorer_discard_ratio_negative", lambda c: c.explorer.set(discard_ratio=-0.1), ValueError,
     r"discard_ratio must be in \[0, 1\)"),
    ("explorer_layer_99", lambda c: c.explorer.set(layer=99), ValueError,
     r"layer must be in \[-2, 1\] for a model with 2 layers, got 99"),
    ("explorer_start_layer_minus_5", lambda c: c.explorer.set(start_layer=-5), ValueError,
     r"start_layer must be in \[-2, 1\]"),
    ("explorer_layer_float", lambda c: c.explorer.set(layer=1.0), TypeError,
     r"layer must be an int index"),
    ("explorer_head_7", lambda c: c.explorer.set(head=7), ValueError,
     r"head must be in \[-2, 1\] for a model with 2 heads"),
    ("explorer_fusion_median", lambda c: c.explorer.set(head_fusion="median"), ValueError,
     r"head_fusion must be one of \['mean', 'max', 'min'\]"),
    ("explorer_target_9", lambda c: c.explorer.set(target=9), ValueError,
     r"class 9 is out of range .* use indices in \[0, 2\]"),
    ("explorer_target_bool", lambda c: c.explorer.set(target=True), TypeError, r"got a bool"),
    ("explorer_image_5", lambda c: c.explorer.set(image=5), ValueError,
     r"index must be in \[-2, 1\] for a model with 2 images"),
    ("explorer_nan_images",
     lambda c: AttentionExplorer(c.model, images(3, {2: float("nan")})), ValueError,
     r"images \[2\] .*NaN or inf"),
    ("explorer_inf_raw_images",
     lambda c: AttentionExplorer(c.model, images(2), raw_images=images(2, {1: float("inf")})),
     ValueError, r"raw_images \[1\]"),
    ("cache_nan_images", lambda c: ExplanationCache(c.model, images(2, {0: float("nan")})),
     ValueError, r"images \[0\]"),
    # ------------------------------------------------------------------ animation, figures
    ("gif_onto_folder",
     lambda c: animation.save_gif([np.zeros((8, 8, 3), np.uint8)], c.tmp / "existing.gif"),
     IsADirectoryError, r"existing folder; pass a file path, e\.g\. .*sweep\.gif"),
    ("gif_write_fails_midway",
     lambda c: (c.monkeypatch.setattr(Image.Image, "save", _half_save),
                animation.save_gif([np.zeros((8, 8, 3), np.uint8)] * 2, c.tmp / "s.gif")),
     OSError, r"could not save .*s\.gif.*nothing was written"),
    ("gif_rename_fails",
     lambda c: (c.fail_replace(),
                animation.save_gif([np.zeros((8, 8, 3), np.uint8)], c.tmp / "s.gif")),
     PermissionError, r"nothing was written"),
    ("sweep_gif_onto_folder_before_any_work",       # model=None: fails before any model pass
     lambda c: animation.discard_sweep_gif(None, images(1)[0], c.tmp / "existing.gif"),
     IsADirectoryError, r"existing folder"),
    ("sweep_gif_nan_image",
     lambda c: animation.discard_sweep_gif(c.model, images(1, {0: float("nan")})[0],
                                           c.tmp / "s.gif"),
     ValueError, r"image \[0\] .*NaN"),
    ("plot_patches_nan_image", lambda c: viz.plot_patches(images(1, {0: float("nan")})[0], 8),
     ValueError, r"must lie in \[0, 1\] \(finite\).*undo ImageNet normalisation"),
    ("overlay_inf_image", lambda c: viz.overlay(images(1, {0: float("inf")})[0], np.zeros((32, 32))),
     ValueError, r"must lie in \[0, 1\] \(finite\)"),
]


def _half_save(self, fp, *args, **kwargs):
    fp.write(b"GIF89a")                     # a GIF header, then the disk fills up
    raise OSError(errno.ENOSPC, "No space left on device")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("row_id, call, exc, pattern", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row_id, call, exc, pattern, tmp_path, explorer, monkeypatch):
    _setup(tmp_path)
    ctx = Ctx(tmp_path, tiny(), explorer, monkeypatch)
    before, state = _tree(tmp_path), explorer.state()
    with pytest.raises(exc, match=pattern):
        call(ctx)
    assert _tree(tmp_path) == before, "a failed call left something behind"
    assert explorer.state() == state, "a refused set() moved a control"


def test_enough_rows():
    assert len(ROWS) >= 50 and len({r[0] for r in ROWS}) == len(ROWS)


def test_pickled_code_never_runs(tmp_path, monkeypatch):
    """The refused checkpoint's code is not executed (os.system is never called)."""
    _setup(tmp_path)
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd))
    with pytest.raises(ValueError, match="refused"):
        engine.load_checkpoint(tiny(), tmp_path / "evil.pt")
    assert calls == [] and pickle.UnpicklingError is not None


def test_converted_explorer_values(explorer):
    """Documented conversions of set(): a negative layer counts from the end, like the
    constructor; None is "predicted class" / "all heads"."""
    try:
        explorer.set(layer=-1, start_layer=-2, head=None, target=None, discard_ratio=0.5)
        s = explorer.state()
        assert (s["layer"], s["start_layer"], s["head"], s["target"]) == (1, 0, None, None)
        assert s["discard_ratio"] == 0.5
        explorer.set(discard_ratio=0.995)          # accepted as by the constructor, not clamped
        assert explorer.state()["discard_ratio"] == 0.995
    finally:
        explorer.set(layer=1, start_layer=0, discard_ratio=0.9)
        explorer.controls["discard_ratio"].max = 0.99

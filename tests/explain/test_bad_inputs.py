"""Bad inputs to the explanation API and its command line (issue 13), one table row each.

Every row of :data:`REFUSED` is ``(id, call, exception type, regex)``: the call must raise
that type with a message matching the regex, which names the problem and the fix. Rows of
:data:`CONVERTED` are documented conversions, checked with the converted values. The grad
mode rows run every registered method inside ``torch.no_grad()`` (must work, same maps,
model untouched) and ``torch.inference_mode()`` (gradient methods refuse with the reason
and the fix, the others work). :data:`CLI_REFUSED` rows run ``python -m vit_course.explain``
and check exit code 2, one ``error:`` line and nothing new in the folders.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from _tiny import images, make_model
from vit_course.explain import METHODS, capture, explain, explain_classes

pytestmark = pytest.mark.usefixtures("one_thread")

FIX_NO_GRAD = r"outside torch\.inference_mode\(\), or use torch\.no_grad\(\)"
FIX_NAN = r"contain NaN or inf pixels.*nan_to_num"


@functools.cache
def _m(kind: str = "course", seed: int = 0) -> nn.Module:
    return make_model(kind, seed=seed)


def _x(B: int = 2) -> torch.Tensor:
    return images(B)


def _poked(value: float, index: int, B: int = 2) -> torch.Tensor:
    x = _x(B)
    x[index, 1, 5, 7] = value
    return x


def _in_inference_mode(call):
    with torch.inference_mode():
        return call()


def _meta_model() -> nn.Module:
    return make_model("course").to("meta")


def _cap(model: nn.Module, B: int = 2, **kw):
    return capture(model, _x(B), with_grad=True, **kw)


REFUSED = [
    # non-finite pixels: refused at the boundary, the image named by its batch index
    ("nan_pixel_grad_rollout", lambda: explain(_m(), _poked(float("nan"), 1), "grad_rollout"),
     ValueError, r"images \[1\] .*" + FIX_NAN),
    ("inf_pixel_rollout", lambda: explain(_m(), _poked(float("inf"), 0), "rollout"),
     ValueError, r"images \[0\] .*" + FIX_NAN),
    ("neg_inf_pixel_attention", lambda: explain(_m(), _poked(-float("inf"), 1), "attention"),
     ValueError, r"images \[1\] .*" + FIX_NAN),
    ("nan_pixel_saliency", lambda: explain(_m(), _poked(float("nan"), 1), "saliency"),
     ValueError, r"images \[1\] .*" + FIX_NAN),
    ("nan_pixel_transformer_attribution",
     lambda: explain(_m(), _poked(float("nan"), 0), "transformer_attribution"),
     ValueError, r"images \[0\] .*" + FIX_NAN),
    ("nan_pixel_random_control", lambda: explain(_m(), _poked(float("nan"), 1), "random"),
     ValueError, r"images \[1\] .*" + FIX_NAN),
    ("nan_pixel_attention_flow", lambda: explain(_m(), _poked(float("nan"), 1), "attention_flow"),
     ValueError, r"images \[1\] .*" + FIX_NAN),
    ("nan_in_last_chunk_named_in_whole_batch",
     lambda: explain_classes(_m(), _poked(float("nan"), 4, B=5), chunk_size=2),
     ValueError, r"images \[4\] .*" + FIX_NAN),
    # devices
    ("meta_images", lambda: explain(_m(), _x().to("meta"), "rollout"),
     ValueError, r"meta device.*load real pixel values"),
    ("meta_model", lambda: explain(_meta_model(), _x(), "rollout"),
     ValueError, r"model's parameters are on the meta device.*load_state_dict"),
    # torch.inference_mode(): no autograd there, the message says what to do instead
    ("inference_mode_explain_classes",
     lambda: _in_inference_mode(lambda: explain_classes(_m(), _x(), classes=[0])),
     RuntimeError, "grad_rollout needs gradients.*" + FIX_NO_GRAD),
    ("inference_mode_capture_with_grad",
     lambda: _in_inference_mode(lambda: capture(_m(), _x(), with_grad=True)),
     RuntimeError, FIX_NO_GRAD),
    # classes of explain_classes
    ("classes_bools", lambda: explain_classes(_m(), _x(), classes=[True, False]),
     TypeError, "True/False are not classes"),
    ("classes_bool_tensor", lambda: explain_classes(_m(), _x(), classes=torch.tensor([True, False])),
     TypeError, "True/False are not classes"),
    ("classes_floats", lambda: explain_classes(_m(), _x(), classes=[1.0, 2.0]),
     TypeError, "nor are floats"),
    ("classes_string", lambda: explain_classes(_m(), _x(), classes="01"),
     TypeError, r"list of int class indices, e\.g\. \[0, 2\]"),
    ("classes_one_int", lambda: explain_classes(_m(), _x(), classes=1),
     TypeError, "wrap one in a list"),
    ("classes_out_of_range", lambda: explain_classes(_m(), _x(), classes=[0, 3]),
     ValueError, r"in \[0, 2\] for a model with 3 classes"),
    ("classes_empty", lambda: explain_classes(_m(), _x(), classes=[]),
     ValueError, "at least one class index"),
    ("classes_chunk_zero", lambda: explain_classes(_m(), _x(), chunk_size=0),
     ValueError, "chunk_size must be a positive int.*images per kept graph"),
    ("classes_images_none", lambda: explain_classes(_m(), None, classes=[0]),
     TypeError, r"must be a torch\.Tensor \(B, C, H, W\)"),
    # targets: floats and bools refused, not truncated
    ("target_float", lambda: explain(_m(), _x(), "grad_rollout", target=1.7),
     TypeError, "an int"),
    ("target_float_list", lambda: explain(_m(), _x(), "grad_rollout", target=[0.0, 1.9]),
     TypeError, "int class indices"),
    ("target_float_tensor", lambda: explain(_m(), _x(), "gae", target=torch.tensor([0.5, 1.5])),
     TypeError, "integer class indices"),
    ("target_bool", lambda: explain(_m(), _x(), "grad_rollout", target=True),
     TypeError, "got a bool"),
    ("target_out_of_range", lambda: explain(_m(), _x(), "grad_rollout", target=3),
     ValueError, r"num_classes=3; use indices in \[0, 2\]"),
    ("target_wrong_count", lambda: explain(_m(), _x(), "grad_rollout", target=[0, 1, 2]),
     ValueError, "one class index per image"),
    # capture= of another model, or with other images
    ("capture_of_same_architecture_other_model",
     lambda: explain(_m(), None, "grad_rollout", capture=_cap(_m(seed=5))),
     ValueError, r"another model; capture this one \(capture\(model, images"),
    ("capture_of_other_family",
     lambda: explain(_m("torchvision"), None, "rollout", capture=_cap(_m())),
     ValueError, "another model"),
    ("capture_with_other_batch",
     lambda: explain(_m(), _x(3), "grad_rollout", capture=_cap(_m())),
     ValueError, r"do not match the capture \(2 images.*pass images=None"),
    ("capture_with_images_of_other_grid",
     lambda: explain(_m(), images(2, size=64), "rollout", capture=_cap(_m())),
     ValueError, "do not match the capture"),
    ("capture_not_a_capture", lambda: explain(_m(), None, "rollout", capture={"a": 1}),
     TypeError, r"capture must be a Capture from vit_course\.explain\.capture"),
    ("capture_without_gradients",
     lambda: explain(_m(), None, "grad_rollout", capture=capture(_m(), _x())),
     ValueError, "with_grad=True"),
    ("capture_for_method_without_capture",
     lambda: explain(_m(), None, "saliency", capture=_cap(_m())),
     TypeError, "without capture="),
    ("capture_target_differs",
     lambda: explain(_m(), None, "grad_rollout", target=0, capture=_cap(_m(), target=1)),
     ValueError, r"differs from the capture's targets.*capture with target="),
    # options
    ("unknown_option", lambda: explain(_m(), _x(), "rollout", alpha=2),
     TypeError, r"unknown option\(s\) \['alpha'\]; its options are: head_fusion"),
    ("option_of_other_method", lambda: explain(_m(), _x(), "attention", discard_ratio=0.5),
     TypeError, "its options are: layer, head, head_fusion"),
    ("layer_str", lambda: explain(_m(), _x(), "attention", layer="1"),
     TypeError, "layer must be an int index"),
    ("layer_float", lambda: explain(_m(), _x(), "attention", layer=1.0),
     TypeError, "layer must be an int index"),
    ("layer_bool", lambda: explain(_m(), _x(), "attention", layer=True),
     TypeError, "layer must be an int index"),
    ("layer_out_of_range", lambda: explain(_m(), _x(), "attention", layer=99),
     ValueError, r"\[-2, 1\] for a model with 2 layers"),
    ("gradcam_layer_foreign_module",
     lambda: explain(_m(), _x(), "gradcam", layer=nn.Linear(2, 2)),
     ValueError, "not a module of this ViT.*default_gradcam_layer"),
    ("gradcam_layer_name", lambda: explain(_m(), _x(), "gradcam", layer="encoder"),
     TypeError, "layer must be None .*or a module of the model, got str"),
    ("attention_gradcam_layer_str", lambda: explain(_m(), _x(), "attention_gradcam", layer="1"),
     TypeError, "layer must be an int index"),
    ("head_out_of_range", lambda: explain(_m(), _x(), "attention", head=2),
     ValueError, r"\[-2, 1\] for a model with 2 heads"),
    ("discard_ratio_nan", lambda: explain(_m(), _x(), "rollout", discard_ratio=float("nan")),
     ValueError, r"must be in \[0, 1\).*fraction of each fused attention matrix"),
    ("discard_ratio_one", lambda: explain(_m(), _x(), "grad_rollout", discard_ratio=1.0),
     ValueError, "1.0 would discard everything"),
    ("discard_ratio_str", lambda: explain(_m(), _x(), "rollout", discard_ratio="0.9"),
     TypeError, r"float in \[0, 1\)"),
    ("head_fusion_unknown", lambda: explain(_m(), _x(), "rollout", head_fusion="sum"),
     ValueError, "'mean' averages the heads"),
    ("start_layer_float", lambda: explain(_m(), _x(), "rollout", start_layer=0.0),
     TypeError, "start_layer must be an int index"),
    ("resolution_unknown", lambda: explain(_m(), _x(), "saliency", resolution="px"),
     ValueError, r"resolution must be one of \['grid', 'pixels'\]"),
    # models and methods
    ("model_not_a_vit", lambda: explain(nn.Linear(3, 3), _x(), "rollout"),
     TypeError, r"vit_course\.models\.ViT, torchvision\.models\.VisionTransformer, timm "
                r"VisionTransformer.*transformers ViTForImageClassification.*rebuild"),
    ("method_unknown", lambda: explain(_m(), _x(), "gradrollout"),
     ValueError, r"unknown explanation method 'gradrollout'; choose one of \[.*'grad_rollout'"),
    ("method_not_a_string", lambda: explain(_m(), _x(), 3),
     ValueError, "choose one of"),
    # images
    ("images_list", lambda: explain(_m(), list(_x()), "rollout"),
     TypeError, r"torch\.stack\(list_of_images\)"),
    ("images_uint8", lambda: explain(_m(), (_x() * 255).to(torch.uint8), "rollout"),
     TypeError, r"images\.float\(\) / 255"),
    ("images_rank_3", lambda: explain(_m(), _x()[0], "rollout"),
     ValueError, r"images\.unsqueeze\(0\)"),
    ("images_wrong_size", lambda: explain(_m(), images(2, size=64), "rollout"),
     ValueError, "must be 32x32 for this model.*resize"),
    ("images_one_channel", lambda: explain(_m(), _x()[:, :1], "gae"),
     ValueError, "3 channels.*convert to RGB"),
    ("images_empty_batch", lambda: explain(_m(), _x()[:0], "rollout"),
     ValueError, "empty batch.*at least one image"),
    ("images_none", lambda: explain(_m(), None, "rollout"),
     TypeError, r"must be a torch\.Tensor"),
]


@pytest.mark.parametrize("call, exc, message", [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_bad_input_is_refused_with_the_fix(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert re.search(message, str(info.value), re.S), str(info.value)


def _same_as_float32(dtype):
    x = _x()
    expected = explain(_m(), x.to(dtype).float(), "grad_rollout", target=1)
    torch.testing.assert_close(explain(_m(), x.to(dtype), "grad_rollout", target=1), expected)


CONVERTED = [   # documented conversions: images move to the model's dtype (and device)
    ("float64_images", lambda: _same_as_float32(torch.float64)),
    ("float16_images", lambda: _same_as_float32(torch.float16)),
    ("bfloat16_images", lambda: _same_as_float32(torch.bfloat16)),
    ("classes_int_tensor", lambda: torch.testing.assert_close(
        explain_classes(_m(), _x(), classes=torch.tensor([2, 0])),
        explain_classes(_m(), _x(), classes=[2, 0]))),
]


@pytest.mark.parametrize("check", [r[1] for r in CONVERTED], ids=[r[0] for r in CONVERTED])
def test_documented_conversion(check):
    check()


# ----------------------------------------------------------------------------- grad modes
def _fresh(kind: str) -> nn.Module:
    model = make_model(kind)
    model.train()                                   # explain must restore this too
    return model


def _explain(model: nn.Module, method: str) -> torch.Tensor:
    torch.manual_seed(0)
    return explain(model, _x(), method, target=1 if METHODS[method].class_specific else None)


@pytest.mark.parametrize("kind", ["course", "torchvision"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_works_inside_no_grad(method, kind):
    model = _fresh(kind)
    expected = _explain(model, method)
    with torch.no_grad():
        got = _explain(model, method)
        assert not torch.is_grad_enabled()          # the caller's mode is left as it was
    torch.testing.assert_close(got, expected)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_inside_inference_mode_works_or_says_why(method):
    model = _fresh("course")
    expected = _explain(model, method)
    with torch.inference_mode():
        if METHODS[method].needs_grad:
            with pytest.raises(RuntimeError, match=f"{method} needs gradients.*" + FIX_NO_GRAD):
                _explain(model, method)
            return
        got = _explain(model, method)
    torch.testing.assert_close(got, expected)
    assert model.training


def test_explain_classes_inside_no_grad_one_class():
    """One class goes through the single-target backward pass (the no_grad bug's path)."""
    with torch.no_grad():
        got = explain_classes(_m(), _x(), classes=[2])
    torch.testing.assert_close(got[:, 0], explain(_m(), _x(), "grad_rollout", target=2))


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    from vit_course.engine import save_checkpoint
    d = tmp_path_factory.mktemp("cli")
    Image.new("RGB", (40, 40), "orange").save(d / "dish.png")
    (d / "notes.png").write_text("not an image")
    (d / "empty.jpg").write_bytes(b"")
    (d / "folder").mkdir()
    (d / "a_file").write_text("x")
    return {"dir": d, "checkpoint": save_checkpoint(make_model("course"), d / "course.pt")}


CLI_REFUSED = [   # (id, argv with {d} for the files' folder, regex naming the fix)
    ("missing_image", ["{d}/nowhere.png"], "No image at.*Check the path"),
    ("image_is_a_folder", ["{d}/folder"], "is a folder, not an image file"),
    ("image_not_decodable", ["{d}/notes.png"], "not an image PIL can decode.*replace the file"),
    ("image_empty_file", ["{d}/empty.jpg"], "not an image PIL can decode"),
    ("out_onto_existing_folder", ["{d}/dish.png", "--out", "{d}/folder"], "must end in .png"),
    ("out_onto_folder_named_png", ["{d}/dish.png", "--out", "{d}/run.png"],
     r"is an existing folder; pass a file path, e\.g\. .*run\.png/map\.png"),
    ("out_under_a_file", ["{d}/dish.png", "--out", "{d}/a_file/sub/map.png"],
     "a_file is a file, not a folder; choose another path"),
    ("device_unknown", ["{d}/dish.png", "--device", "gpu0"], "not a torch device; use cpu"),
    ("method_unknown", ["{d}/dish.png", "--method", "rolout"], "choose one of"),
    ("head_out_of_range", ["{d}/dish.png", "--method", "attention", "--head", "5"],
     r"\[-2, 1\] for a model with 2 heads"),
    ("category_out_of_range", ["{d}/dish.png", "--category-index", "-4"], "num_classes=3"),
]


@pytest.mark.parametrize("argv, message", [r[1:] for r in CLI_REFUSED],
                         ids=[r[0] for r in CLI_REFUSED])
def test_cli_bad_input_exit_2_nothing_written(argv, message, cli_files, tmp_path, capsys,
                                              monkeypatch):
    from vit_course.explain.__main__ import main
    d = cli_files["dir"]
    (d / "run.png").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    before = sorted(d.rglob("*"))
    rc = main([a.format(d=d) for a in argv] + ["--checkpoint", str(cli_files["checkpoint"])])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(d.rglob("*")) == before and not list(tmp_path.iterdir())


def test_cli_device_without_hardware(cli_files, tmp_path, capsys, monkeypatch):
    from vit_course.explain.__main__ import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main([str(cli_files["dir"] / "dish.png"), "--device", "cuda", "--out",
               str(tmp_path / "m.png"), "--checkpoint", str(cli_files["checkpoint"])])
    assert rc == 2 and "no cuda device is available on this machine; use --device cpu" in \
        capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_failed_write_leaves_nothing(cli_files, tmp_path, capsys, monkeypatch):
    """A write that fails half-way (full disk) leaves no temporary file and no new folder."""
    from matplotlib.figure import Figure

    from vit_course.explain.__main__ import main

    def full_disk(self, fname, **kw):
        (fname.write if hasattr(fname, "write") else Path(fname).write_bytes)(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    rc = main([str(cli_files["dir"] / "dish.png"), "--out", str(tmp_path / "new" / "m.png"),
               "--checkpoint", str(cli_files["checkpoint"])])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _broken_model(kind: str = "course") -> nn.Module:
    """A model whose patch embedding holds one NaN (a diverged training run)."""
    model = make_model(kind)
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim == 4).view(-1)[0] = float("nan")
    return model


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m not in ("random",
                                                                           "center_gaussian")))
def test_nan_weights_are_refused_not_propagated(method):
    """Finite images through NaN weights: every method that runs the model says so."""
    with pytest.raises(ValueError, match=r"images \[0, 1\] .*NaN or inf.*reload the weights"):
        explain(_broken_model(), _x(), method)

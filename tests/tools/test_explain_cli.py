"""``python -m vit_course.explain IMAGE ...`` (vit_course.tools.explain_cli): the overlay,
the top-3 predictions, and one ``error:`` line with exit code 2 for bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from _tiny import make_model
from vit_course.explain import METHODS, Explainer, register_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def course_checkpoint(tmp_path: Path) -> Path:
    from vit_course.engine import save_checkpoint
    return save_checkpoint(make_model("course"), tmp_path / "course.pt",
                           class_names=["pizza", "steak", "sushi"])

@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(40, 50, 4, generator=g) * 255).to(torch.uint8).numpy()
    path = tmp_path / "dish.png"
    Image.fromarray(arr, mode="RGBA").save(path)            # RGBA: converted to RGB
    return path

def test_cli_writes_overlay_and_prints_top3(course_checkpoint, image_file, tmp_path, capsys):
    from vit_course.explain.__main__ import main
    out = tmp_path / "out" / "map.png"
    rc = main([str(image_file), "--checkpoint", str(course_checkpoint), "--method",
               "grad_rollout", "--head-fusion", "max", "--discard-ratio", "0.5",
               "--category-index", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-3" in printed and all(n in printed for n in ("pizza", "steak", "sushi"))
    assert list(out.parent.iterdir()) == [out]                # no temporary files left

@pytest.mark.parametrize("args, message", [
    (["missing.png"], "No image at"),
    (["{img}", "--method", "no_such"], "unknown explanation method 'no_such'"),
    (["{img}", "--discard-ratio", "1.5"], r"\[0, 1\)"),
    (["{img}", "--method", "attention", "--discard-ratio", "0.5"], "does not apply"),
    (["{img}", "--category-index", "7"], "num_classes=3"),
    (["{img}", "--out", "map.jpg"], "must end in .png"),
])
def test_cli_bad_input_exit_code_2_without_traceback(args, message, course_checkpoint,
                                                     image_file, tmp_path, capsys,
                                                     monkeypatch):
    from vit_course.explain.__main__ import main
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    argv = [a.format(img=image_file) for a in args] + ["--checkpoint", str(course_checkpoint)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not list(run_dir.iterdir())                       # nothing written

def test_cli_runs_as_module(tmp_path, monkeypatch, capsys):
    import runpy
    monkeypatch.delitem(sys.modules, "vit_course.explain.__main__", raising=False)
    monkeypatch.setattr(sys, "argv", ["vit_course.explain", str(tmp_path / "no.png")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("vit_course.explain", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No image at") and "Traceback" not in err

def test_cli_bad_checkpoint(tmp_path, image_file, capsys):
    from vit_course.explain.__main__ import main
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something/1"}, bad)
    assert main([str(image_file), "--checkpoint", str(bad)]) == 2
    assert "expected a head" in capsys.readouterr().err

@pytest.mark.slow
def test_cli_imagenet_vit_b_16_with_standin_weights(standin_torch_home, image_file, tmp_path,
                                                    capsys):
    from vit_course.explain.__main__ import main
    out = tmp_path / "vitb.png"
    assert main([str(image_file), "--model", "vit_b_16_imagenet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "STAND-IN" in printed and out.is_file()
    assert "top-3" in printed and printed.count("%") == 3

def test_cli_method_without_capture_support(course_checkpoint, image_file, tmp_path, capsys):
    from vit_course.explain.__main__ import main

    @register_method("_test_pixels")
    class Pixels(Explainer):
        supports_capture = False

        def compute(self, images, target):
            assert torch.is_tensor(target) and target.shape == (images.shape[0],)
            return images.mean(1)[:, ::8, ::8]                 # (B, 4, 4) for 32 px

    try:
        out = tmp_path / "pixels.png"
        assert main([str(image_file), "--checkpoint", str(course_checkpoint), "--method",
                     "_test_pixels", "--category-index", "1", "--out", str(out)]) == 0
        assert out.is_file() and "top-3" in capsys.readouterr().out
    finally:
        METHODS.pop("_test_pixels")

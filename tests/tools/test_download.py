"""vit_course.tools.download (``python -m vit_course.download``): the classroom preparation CLI."""

from __future__ import annotations

import vit_course.download
from vit_course.tools import download

VIT_B16_FILE = "vit_b_16-c867db91.pth"


def test_thin_module_runs_this_cli():
    assert vit_course.download.main is download.main


def test_download_cli_fails_clearly_offline(offline_torch_home, capsys):
    assert download.main(["--weights"]) == 1
    err = capsys.readouterr().err
    assert VIT_B16_FILE in err and "python -m vit_course.download --all" in err


def test_download_cli_reports_each_part(offline_torch_home, tmp_path, monkeypatch, capsys):
    import vit_course.data

    monkeypatch.setattr(vit_course.data, "download_pizza_steak_sushi", lambda: tmp_path / "psd")
    assert download.main(["--data"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "psd") in out and "Ready" in out
    assert download.main([]) == 1  # default = --all: data fine, weights unreachable
    captured = capsys.readouterr()
    assert str(tmp_path / "psd") in captured.out and "FAILED weights" in captured.err


def test_download_cli_refuses_standin_as_ready(standin_torch_home, capsys):
    assert download.main(["--weights"]) == 1
    assert "STAND-IN" in capsys.readouterr().err

"""Tests for vit_course.engine: per-image metrics, evaluation, prediction, checkpoints, seeding."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vit_course import engine
from vit_course.models import ViT

TINY = dict(img_size=32, patch_size=8, num_transformer_layers=2, embedding_dim=32,
            mlp_size=64, num_heads=2, num_classes=3)


class Identity(nn.Module):
    """'Model' whose logits are its input: predictions are fixed by the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def uneven_data() -> tuple[torch.Tensor, torch.Tensor]:
    """5 images in batches of 4 + 1: batch 1 has 1/4 right, batch 2 has 1/1 right.
    Per image: 2/5 = 0.4. The mean of per-batch accuracies would be 0.625."""
    logits = torch.tensor([[3.0, 0.0, 0.0],   # pred 0, true 0  ✓
                           [3.0, 0.0, 0.0],   # pred 0, true 1
                           [0.0, 3.0, 0.0],   # pred 1, true 2
                           [0.0, 0.0, 3.0],   # pred 2, true 0
                           [0.0, 0.5, 0.0]])  # pred 1, true 1  ✓
    labels = torch.tensor([0, 1, 2, 0, 1])
    return logits, labels


def test_test_step_counts_accuracy_and_loss_per_image_with_uneven_last_batch():
    X, y = uneven_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=False)
    loss, acc = engine.test_step(Identity(), loader, nn.CrossEntropyLoss())
    assert acc == pytest.approx(0.4), f"per-image accuracy 2/5, got {acc} (0.625 is per-batch)"
    assert loss == pytest.approx(F.cross_entropy(X, y).item(), rel=1e-6)
    per_batch_mean = (F.cross_entropy(X[:4], y[:4]) + F.cross_entropy(X[4:], y[4:])).item() / 2
    assert loss != pytest.approx(per_batch_mean, rel=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_reductions_all_give_the_per_image_mean(reduction):
    X, y = uneven_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    loss, _ = engine.test_step(Identity(), loader, nn.CrossEntropyLoss(reduction=reduction))
    assert loss == pytest.approx(F.cross_entropy(X, y).item(), rel=1e-6)


def test_train_step_counts_per_image():
    X, y = uneven_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=False)
    model = nn.Linear(3, 3)
    with torch.no_grad():                       # logits = inputs, and lr=0 keeps them so
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, acc = engine.train_step(model, loader, nn.CrossEntropyLoss(), opt)
    assert acc == pytest.approx(0.4)
    assert loss == pytest.approx(F.cross_entropy(X, y).item(), rel=1e-6)
    assert model.training


def test_train_learns_a_separable_toy_problem_and_history_has_every_epoch():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 2, generator=g)
    y = (X[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
    model = nn.Linear(2, 2)
    history = engine.train(model, loader, loader, torch.optim.SGD(model.parameters(), lr=0.5),
                           nn.CrossEntropyLoss(), epochs=15, progress=False)
    assert set(history) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(len(v) == 15 for v in history.values())
    assert history["test_acc"][-1] >= 0.95
    assert history["train_loss"][-1] < history["train_loss"][0]


def _seeded_run(global_seed: int, seed: int = 7) -> dict:
    torch.manual_seed(0)                        # same initial weights in every run
    model = ViT(**TINY, mlp_dropout=0.2, embedding_dropout=0.2)
    g = torch.Generator().manual_seed(1)
    X, y = torch.rand(10, 3, 32, 32, generator=g), torch.randint(0, 3, (10,), generator=g)
    train_dl = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    test_dl = DataLoader(TensorDataset(X[:6], y[:6]), batch_size=4)
    torch.manual_seed(global_seed)              # disturb the global RNG: train must reseed
    return engine.train(model, train_dl, test_dl, torch.optim.Adam(model.parameters(), 1e-3),
                        nn.CrossEntropyLoss(), epochs=2, seed=seed, progress=False)


def test_seeded_train_is_reproducible():
    a = _seeded_run(global_seed=123)
    b = _seeded_run(global_seed=999)
    assert a == b
    c = _seeded_run(global_seed=123, seed=8)
    assert c["train_loss"] != a["train_loss"], "a different seed should shuffle/drop differently"


def test_train_progress_prints_one_line_per_epoch(capsys):
    X, y = uneven_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    model = nn.Linear(3, 3)
    engine.train(model, loader, None, torch.optim.SGD(model.parameters(), lr=0.1),
                 nn.CrossEntropyLoss(), epochs=2, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "epoch 1/2" in text and "epoch 2/2" in text and "train_acc" in text


def test_train_rejects_bad_epochs():
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        engine.train(model, [], None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), epochs=0)


# ----------------------------------------------------------------------------- evaluate
def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """K=4; class 2 is never predicted, class 3 never occurs nor is predicted.

    cm = [[2,1,0,0],[0,2,0,0],[1,1,0,0],[0,0,0,0]]
    precision = [2/3, 2/4, 0, 0]; recall = [2/3, 1, 0, 0]; f1 = [2/3, 2/3, 0, 0]
    accuracy = 4/7; macro F1 = (4/3)/4 = 1/3.
    """
    y_true = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    y_pred = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    return y_true, y_pred


def test_confusion_matrix_and_metrics_by_hand():
    y_true, y_pred = hand_case()
    cm = engine.confusion_matrix(y_true, y_pred, 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    m = engine.classification_metrics(cm)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["precision"].tolist() == pytest.approx([2 / 3, 0.5, 0, 0])
    assert m["recall"].tolist() == pytest.approx([2 / 3, 1, 0, 0])
    assert m["f1"].tolist() == pytest.approx([2 / 3, 2 / 3, 0, 0])
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["support"].tolist() == [3, 2, 2, 0]
    assert not any(torch.isnan(m[k]).any() for k in ("precision", "recall", "f1"))


def test_evaluate_on_the_hand_case_with_uneven_batches_restores_mode():
    y_true, y_pred = hand_case()
    X = F.one_hot(y_pred, 4).float() * 4
    loader = DataLoader(TensorDataset(X, y_true), batch_size=3)   # batches of 3, 3, 1
    model = nn.Sequential(Identity(), nn.Dropout(0.9))
    model.train()
    model[0].eval()                              # a mixed state must come back exactly
    ev = engine.evaluate(model, loader, ["a", "b", "c", "d"])
    assert model.training and model[1].training and not model[0].training
    assert isinstance(ev, engine.Evaluation)
    assert ev.accuracy == pytest.approx(4 / 7)
    assert ev.macro_f1 == pytest.approx(1 / 3)
    assert ev.f1.tolist() == pytest.approx([2 / 3, 2 / 3, 0, 0])
    assert ev.confusion_matrix.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(ev.y_true, y_true) and torch.equal(ev.y_pred, y_pred)
    assert ev.probs.shape == (7, 4)
    torch.testing.assert_close(ev.probs.sum(1), torch.ones(7))
    report = ev.report()
    assert "precision" in report and "a" in report and "0.571" in report
    d = ev.as_dict()
    assert d["confusion_matrix"][0] == [2, 1, 0, 0] and d["class_names"] == ["a", "b", "c", "d"]


def test_evaluate_rejects_mismatched_class_names():
    y_true, y_pred = hand_case()
    loader = DataLoader(TensorDataset(F.one_hot(y_pred, 4).float(), y_true), batch_size=4)
    with pytest.raises(ValueError, match=r"logits of shape \(4, 4\), expected \(B, 3\)"):
        engine.evaluate(Identity(), loader, ["a", "b", "c"])


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        engine.confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)


# ----------------------------------------------------------------------------- predict
def test_predict_gives_probabilities_in_eval_mode_and_restores_mode():
    torch.manual_seed(0)
    model = ViT(**TINY, mlp_dropout=0.5, embedding_dropout=0.5).train()
    x = torch.rand(5, 3, 32, 32)
    p1 = engine.predict(model, x, batch_size=2)
    p2 = engine.predict(model, x)
    assert p1.shape == (5, 3) and model.training
    torch.testing.assert_close(p1.sum(1), torch.ones(5))
    torch.testing.assert_close(p1, p2)                 # dropout off → deterministic
    single = engine.predict(model, x[0])
    torch.testing.assert_close(single, p1[:1])


def test_predict_rejects_non_tensor():
    with pytest.raises(TypeError, match="Tensor"):
        engine.predict(Identity(), [[0.0]])


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_with_meta(tmp_path):
    torch.manual_seed(0)
    a = ViT(**TINY)
    path = engine.save_checkpoint(a, tmp_path / "sub" / "model.pt", class_names=["p", "s", "u"],
                                  epochs=3, acc=0.5)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"], "no temp files left"
    torch.manual_seed(1)
    b = ViT(**TINY)
    meta = engine.load_checkpoint(b, path)
    assert meta == {"class_names": ["p", "s", "u"], "epochs": 3, "acc": 0.5}
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_checkpoint_file_loads_with_weights_only(tmp_path):
    model = ViT(**TINY)
    path = engine.save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == engine.CHECKPOINT_FORMAT
    assert set(payload["state_dict"]) == set(model.state_dict())


def test_bare_state_dict_is_accepted(tmp_path):
    model = ViT(**TINY)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    other = ViT(**TINY)
    assert engine.load_checkpoint(other, tmp_path / "sd.pt") == {}
    assert torch.equal(other.head.weight, model.head.weight)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nope.pt.*save_checkpoint"):
        engine.load_checkpoint(ViT(**TINY), tmp_path / "nope.pt")


def test_mismatched_architecture_is_a_clear_error_and_leaves_model_untouched(tmp_path):
    path = engine.save_checkpoint(ViT(**TINY), tmp_path / "m.pt")
    other = ViT(**{**TINY, "num_classes": 5, "num_transformer_layers": 1})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit this ViT.*head.weight: checkpoint "
                                         r"\(3, 32\) vs model \(5, 32\).*unexpected.*num_classes"):
        engine.load_checkpoint(other, path)
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged or truncated.*delete it"):
        engine.load_checkpoint(ViT(**TINY), bad)


def test_non_json_meta_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(TypeError, match=r"JSON-able.*\['weights'\]"):
        engine.save_checkpoint(ViT(**TINY), tmp_path / "m.pt", weights=torch.ones(2), ok=1)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    model = ViT(**TINY)
    path = engine.save_checkpoint(model, tmp_path / "m.pt", version=1)
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(engine.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        engine.save_checkpoint(model, path, version=2)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]

"""mambabook.train: the one training stack, on the tasks and on the corpus; the schedule; the
checkpoint format, its command line, and the committed checkpoints."""

import json

import numpy as np
import pytest
import torch

from mambabook import tasks, train
from mambabook.corpus import load_corpus, sample_batch

# The fast training test (chapter 5 quotes it): S6 on a small selective-copying instance.
SMALL_S6 = train.TrainConfig(task="selective_copy", model="s6", seed=0, L=16, n_memorize=2,
                             vocab=4, d_model=32, n_layer=2, d_state=8, steps=250, batch=32,
                             lr=1e-2, warmup=25, test_lengths=[1], test_batch=128)
SMALL_S6_ACCURACY = 0.9  # reached at L = 16 after 250 steps (1.0 on one CPU thread)


def test_small_s6_learns_selective_copy():
    torch.set_num_threads(1)
    result = train.train(SMALL_S6, device="cpu", progress=False)
    assert result["accuracy"]["16"] >= SMALL_S6_ACCURACY, result["accuracy"]
    loss = result["curve"]["train_loss"]
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) / 4


def test_lm_training_lowers_loss_and_checkpoint_round_trips(tmp_path):
    corpus = load_corpus(max_bytes=300_000)
    for kind in ("s6", "attention"):
        cfg = train.TrainConfig(task="stdlib", model=kind, d_model=16, n_layer=2, d_state=4, L=16,
                                batch=4, steps=12, warmup=2, lr=1e-2, eval_every=6,
                                eval_batches=1)
        result = train.train(cfg, device="cpu", corpus=corpus, progress=False)
        curve = result["curve"]
        assert len(curve["train_loss"]) == 12 and curve["val_step"] == [6, 12]
        assert curve["val_loss"][-1] < 5.0 < np.log(256) + 0.5  # below ~uniform bytes (5.55)
        assert np.mean(curve["train_loss"][-3:]) < np.mean(curve["train_loss"][:3])
        train.save_checkpoint(result, tmp_path)
        model, cfg2, meta = train.load_checkpoint("stdlib", kind, 0, folder=tmp_path)
        assert cfg2 == cfg and meta["curve"]["val_loss"] == curve["val_loss"]
        x, y = sample_batch(corpus.val, 2, 16, torch.Generator().manual_seed(0))
        assert train.evaluate(model, [(x, y)]) == train.evaluate(result["model"], [(x, y)])


def test_lr_schedule_warmup_then_cosine_to_a_tenth():
    cfg = train.TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [train.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # decays monotonically
    assert train.lr_at(100, cfg) == pytest.approx(0.1)
    constant = train.TrainConfig(steps=100, warmup=10, lr=1.0, schedule="constant")
    assert train.lr_at(80, constant) == 1.0


def test_optimizer_decays_matrices_only():
    model = train.build_model(train.TrainConfig(task="induction", d_model=16, n_layer=2))
    decay, no_decay = train.optimizer(model, train.TrainConfig()).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_loss_ignores_unscored_positions():
    model = train.build_model(train.TrainConfig(task="induction", d_model=16, n_layer=2))
    x = torch.randint(0, 9, (2, 6))
    y = torch.full((2, 6), tasks.IGNORE)
    y[:, -1] = 3
    logits = model(x)[:, -1]
    want = torch.nn.functional.cross_entropy(logits, y[:, -1])
    torch.testing.assert_close(train.loss_fn(model, x, y), want)


def test_checkpoint_cli_round_trip(tmp_path):
    torch.set_num_threads(1)
    argv = ["--task", "induction", "--model", "attention", "--steps", "3", "--L", "8",
            "--d-model", "8", "--n-layer", "2", "--eval-every", "2", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    model, cfg, metrics = train.load_checkpoint("induction", "attention", 0, folder=tmp_path)
    assert cfg.L == 8 and metrics["command"] == (
        "python -m mambabook.train --task induction --model attention --seed 0 --d-model 8 "
        "--n-layer 2 --L 8 --steps 3 --eval-every 2 --threads 1")
    assert set(metrics["accuracy"]) == {"8", "16", "32", "64", "128"}
    saved = json.loads((tmp_path / "induction_attention_seed0.json").read_text())
    assert saved["params"] == sum(p.numel() for p in model.parameters())
    assert train.load_checkpoint("induction", "s6", 0, folder=tmp_path) is None


@pytest.mark.parametrize("call, match", [
    (lambda: train.TrainConfig(model="rnn"), "model"),
    (lambda: train.TrainConfig(schedule="linear"), "schedule"),
    (lambda: train.TrainConfig(d_model=0), "d_model"),
    (lambda: train.TrainConfig(lr=0.0), "lr"),
])
def test_bad_config_names_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


COMMITTED = [(t, m) for t in tasks.TASKS for m in train.MODELS] + [("stdlib", "s6"),
                                                                   ("stdlib", "attention")]


@pytest.mark.parametrize("task, kind", COMMITTED)
def test_committed_checkpoints(task, kind):
    """Each committed checkpoint is small and loads; a task's reproduces its recorded
    accuracy at L, an LM its recorded validation loss."""
    path = train.checkpoint_dir() / f"{train.checkpoint_name(task, kind, 0)}.pt"
    if not path.exists():
        pytest.skip(f"no committed checkpoint {path.name}")
    assert path.stat().st_size < 1_000_000
    model, cfg, metrics = train.load_checkpoint(task, kind, 0)
    torch.set_num_threads(1)
    if task == "stdlib":
        batches = train.Batches(cfg, "cpu")
        assert train.evaluate(model, batches.val) == pytest.approx(
            metrics["curve"]["val_loss"][-1], rel=1e-4)
    else:
        acc = tasks.accuracy(model, cfg, cfg.L, n=cfg.test_batch)
        assert acc == pytest.approx(metrics["accuracy"][str(cfg.L)], abs=1e-9)

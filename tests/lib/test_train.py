"""mambabook.train: the one training stack, on the tasks and on the corpus; the schedule; the
checkpoint format, its command line, and the committed checkpoints; data-parallel under
torchrun (2 gloo processes equal one process at the same global batch)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import tol

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


# ----------------------------------------------------------------------------- data-parallel
DDP_ARGS = ["--task", "stdlib", "--model", "s6", "--d-model", "16", "--n-layer", "2",
            "--d-state", "4", "--L", "16", "--batch", "4", "--steps", "5", "--warmup", "2",
            "--eval-every", "3", "--eval-batches", "1", "--max-bytes", "300000",
            "--device", "cpu", "--threads", "1"]


def test_torchrun_two_processes_equal_one(tmp_path):
    """The same global batch on 2 gloo processes: the losses and weights of one process; one
    checkpoint, written by rank 0, with the torchrun command that reproduces it."""
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mambabook.train", *DDP_ARGS, "--out", str(tmp_path / "ddp")],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1, run.stdout  # rank 0 only
    torch.set_num_threads(1)
    assert train.main([*DDP_ARGS, "--out", str(tmp_path / "one")]) == 0
    name = train.checkpoint_name("stdlib", "s6", 0)
    ddp, one = (json.loads((tmp_path / f"{n}/{name}.json").read_text()) for n in ("ddp", "one"))
    assert ddp["ranks"] == 2 and one["ranks"] == 1
    assert ddp["command"].startswith("torchrun --standalone --nproc-per-node 2 -m mambabook.train")
    assert ddp["command"].split(" mambabook.train ")[1] == one["command"].split(
        " mambabook.train ")[1]
    assert ddp["curve"]["step"] == one["curve"]["step"] == [1, 2, 3, 4, 5]
    assert ddp["curve"]["val_step"] == one["curve"]["val_step"] == [3, 5]
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor(ddp["curve"][key]),
                                   torch.tensor(one["curve"][key]), **tol(torch.float32))
    w_ddp, w_one = (torch.load(tmp_path / f"{n}/{name}.pt", weights_only=True)["state_dict"]
                    for n in ("ddp", "one"))
    assert w_ddp.keys() == w_one.keys()
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], **tol(torch.float32), msg=k)


@pytest.mark.parametrize("task", ["stdlib", "selective_copy"])
def test_batches_split_the_global_batch_over_the_ranks(task, monkeypatch):
    """Rank r of R samples rows r B/R .. (r+1) B/R of one process's batch; validation whole."""
    cfg = train.TrainConfig(task=task, L=16, batch=6, eval_batches=1, max_bytes=300_000)
    corpus = load_corpus(cfg.max_bytes) if task == "stdlib" else None
    one = train.Batches(cfg, "cpu", corpus)
    want = one.sample(torch.Generator().manual_seed(3))
    parts = []
    for rank in range(3):
        monkeypatch.setattr(train, "rank_and_ranks", lambda rank=rank: (rank, 3))
        batches = train.Batches(cfg, "cpu", corpus)
        parts.append(batches.sample(torch.Generator().manual_seed(3)))
        for got, full in zip(batches.val[0], one.val[0]):
            assert torch.equal(got, full)
    for i in (0, 1):
        assert parts[0][i].shape[0] == 2
        assert torch.equal(torch.cat([p[i] for p in parts]), want[i])


def test_batch_must_split_over_the_ranks(monkeypatch):
    monkeypatch.setattr(train, "rank_and_ranks", lambda: (0, 3))
    cfg = train.TrainConfig(task="induction", d_model=16, n_layer=2, batch=4, steps=1)
    with pytest.raises(ValueError, match=r"batch must be a multiple of the number of ranks \(3\)"):
        train.train(cfg, device="cpu", progress=False)

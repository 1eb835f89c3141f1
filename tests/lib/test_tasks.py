"""mambabook.tasks: the data generators, the models, training to a stated accuracy, checkpoints."""

import json

import pytest
import torch

from mambabook import tasks

# The fast training test (chapter 5 quotes it): S6 on a small selective-copying instance.
SMALL_S6 = tasks.TrainConfig(task="selective_copy", model="s6", seed=0, L=16, n_memorize=2,
                             vocab=4, d_model=16, d_state=8, steps=250, batch=32, lr=1e-2,
                             eval_multipliers=[1], eval_batch=128)
SMALL_S6_ACCURACY = 0.9  # reached at L = 16 after 250 steps (about 10 s on one CPU thread)


# ----------------------------------------------------------------------------- data
def test_selective_copy_batch():
    gen = torch.Generator().manual_seed(0)
    tokens, targets = tasks.selective_copy_batch(64, L=20, n_memorize=5, vocab=6, generator=gen)
    assert tokens.shape == targets.shape == (64, 25)
    body = tokens[:, :20]
    assert ((body >= 2).sum(1) == 5).all()  # exactly K data tokens among the L positions
    assert (tokens[:, 20:] == tasks.MARK).all()
    assert (targets[:, :20] == tasks.IGNORE).all()
    for b in range(64):  # the targets are the data tokens, in order of appearance
        assert targets[b, 20:].tolist() == body[b][body[b] >= 2].tolist()
    assert tokens.max() <= 6 + 1
    again = tasks.selective_copy_batch(64, 20, 5, 6, torch.Generator().manual_seed(0))[0]
    assert torch.equal(tokens, again)  # seeded


def test_induction_batch():
    tokens, targets = tasks.induction_batch(128, L=30, vocab=8, generator=torch.Generator().manual_seed(1))
    assert tokens.shape == (128, 30)
    assert ((tokens == 0).sum(1) == 2).all() and (tokens[:, -1] == 0).all()  # trigger twice
    first = (tokens == 0).int().argmax(1)  # the first trigger
    answer = tokens[torch.arange(128), first + 1]
    assert torch.equal(targets[:, -1], answer) and (targets[:, :-1] == tasks.IGNORE).all()
    assert first.max() <= 30 - 4


@pytest.mark.parametrize("call, match", [
    (lambda: tasks.selective_copy_batch(2, L=3, n_memorize=4), "n_memorize"),
    (lambda: tasks.selective_copy_batch(2, L=0), "L"),
    (lambda: tasks.induction_batch(2, L=3), "L"),
    (lambda: tasks.make_batch("copy", 2, 8, 4, 2), "task"),
    (lambda: tasks.SequenceModel("lstm", 10), "model"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- models
def test_models_same_size_and_causal():
    counts = {}
    for kind in tasks.MODELS:
        model = tasks.build_model(tasks.TrainConfig(model=kind)).eval()
        counts[kind] = tasks.count_parameters(model)
        x = torch.randint(0, 10, (2, 24))
        y = model(x)
        x2 = x.clone()
        x2[:, 15:] = (x2[:, 15:] + 1) % 10  # change the future: the past's outputs must not move
        torch.testing.assert_close(model(x2)[:, :15], y[:, :15])
    assert max(counts.values()) / min(counts.values()) < 1.3, counts


def test_lti_readout_fails_and_gated_readout_succeeds():
    """A linear time-invariant readout cannot copy selectively; drop the noise first and it can."""
    assert tasks.lti_least_squares_copy(n=800, L=24, gated=False) < 0.7
    assert tasks.lti_least_squares_copy(n=800, L=24, gated=True) == 1.0


def test_s6_trace():
    model = tasks.build_model(tasks.TrainConfig(model="s6", d_model=8, d_state=4)).eval()
    tokens = torch.randint(0, 10, (12,))
    tr = tasks.s6_trace(model, tokens)
    assert tr["delta"].shape == (12, 16) and tr["states"].shape == (12, 16, 4)
    assert (tr["delta"] > 0).all()
    torch.testing.assert_close(tr["memory"].amax(1), torch.ones(12))
    assert (tr["memory"].triu(1) == 0).all()  # h_t holds nothing from the future
    with pytest.raises(ValueError, match="model"):
        tasks.s6_trace(tasks.build_model(tasks.TrainConfig(model="s4")), tokens)


# ----------------------------------------------------------------------------- training
def test_small_s6_learns_selective_copy():
    torch.set_num_threads(1)
    model, metrics = tasks.train(SMALL_S6, progress=False)
    assert metrics["accuracy"]["16"] >= SMALL_S6_ACCURACY, metrics["accuracy"]
    assert metrics["loss"][-1] < metrics["loss"][0] / 4


def test_checkpoint_roundtrip_and_cli(tmp_path):
    torch.set_num_threads(1)
    argv = ["train", "--task", "induction", "--model", "attention", "--steps", "3", "--L", "8",
            "--d-model", "8", "--out", str(tmp_path)]
    assert tasks.main(argv) == 0
    model, cfg, metrics = tasks.load_checkpoint("induction", "attention", 0, folder=tmp_path)
    assert cfg.L == 8 and metrics["command"].endswith("--seed 0 --L 8 --d-model 8 --steps 3")
    assert set(metrics["accuracy"]) == {"8", "16", "32", "64", "128"}
    assert json.loads((tmp_path / "induction_attention_seed0.json").read_text())["parameters"] == \
        tasks.count_parameters(model)
    assert tasks.load_checkpoint("induction", "s6", 0, folder=tmp_path) is None


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("kind", tasks.MODELS)
def test_committed_checkpoints(task, kind):
    """Each committed checkpoint is small, loads, and reproduces its recorded accuracy at L."""
    path = tasks.checkpoint_dir() / f"{tasks.checkpoint_name(task, kind, 0)}.pt"
    if not path.exists():
        pytest.skip(f"no committed checkpoint {path.name}")
    assert path.stat().st_size < 1_000_000
    model, cfg, metrics = tasks.load_checkpoint(task, kind, 0)
    torch.set_num_threads(1)
    acc = tasks.evaluate(model, cfg, cfg.L, n=cfg.eval_batch)
    assert acc == pytest.approx(metrics["accuracy"][str(cfg.L)], abs=1e-9)

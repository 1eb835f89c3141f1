"""mambabook.tasks: the data generators, accuracy, the S6 and attention traces."""

import pytest
import torch

from mambabook import tasks
from mambabook.train import MODELS, TrainConfig, build_model


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
    (lambda: TrainConfig(model="lstm"), "model"),
    (lambda: TrainConfig(task="copy"), "task"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- models
def test_models_same_size_and_causal():
    counts = {}
    for kind in MODELS:
        model = build_model(TrainConfig(task="induction", model=kind, d_model=32)).eval()
        counts[kind] = sum(p.numel() for p in model.parameters())
        x = torch.randint(0, 9, (2, 24))
        y = model(x)
        x2 = x.clone()
        x2[:, 15:] = (x2[:, 15:] + 1) % 9  # change the future: the past's outputs must not move
        torch.testing.assert_close(model(x2)[:, :15], y[:, :15])
    assert max(counts.values()) / min(counts.values()) < 1.1, counts


def test_accuracy_counts_scored_positions():
    """A model that outputs the targets scores 1; one that outputs BLANK everywhere 0."""
    cfg = TrainConfig(task="selective_copy", L=12, n_memorize=3, vocab=5)

    class Oracle(torch.nn.Module):
        def __init__(self, right):
            super().__init__()
            self.w, self.right = torch.nn.Parameter(torch.zeros(1)), right

        def forward(self, tokens):  # reads the data tokens in order, answers at the markers
            out = torch.zeros(*tokens.shape, 8)
            if self.right:
                data = tokens[:, :12][tokens[:, :12] >= 2].view(len(tokens), 3)
                out[:, 12:].scatter_(2, data[..., None], 1.0)
            return out

    assert tasks.accuracy(Oracle(True), cfg, 12, n=70) == 1.0
    assert tasks.accuracy(Oracle(False), cfg, 12, n=70) == 0.0


def test_lti_readout_fails_and_gated_readout_succeeds():
    """A linear time-invariant readout cannot copy selectively; drop the noise first and it can."""
    assert tasks.lti_least_squares_copy(n=800, L=24, gated=False) < 0.7
    assert tasks.lti_least_squares_copy(n=800, L=24, gated=True) == 1.0


@pytest.mark.parametrize("layer", [0, 1])
def test_s6_trace(layer):
    model = build_model(TrainConfig(task="selective_copy", d_model=8, d_state=4, n_layer=2)).eval()
    tokens = torch.randint(0, 10, (12,))
    tr = tasks.s6_trace(model, tokens, layer=layer)
    assert tr["delta"].shape == (12, 16) and tr["states"].shape == (12, 16, 4)
    assert (tr["delta"] > 0).all()
    torch.testing.assert_close(tr["memory"].amax(1), torch.ones(12))
    assert (tr["memory"].triu(1) == 0).all()  # h_t holds nothing from the future
    # the trace's last state is the block's own scan of the same inputs
    x = model.embedding(tokens[None])
    for res in model.layers[:layer]:
        x = x + res.mixer(res.norm(x))
    u, _, _ = model.layers[layer].mixer.inner(model.layers[layer].norm(x))
    _, last = model.layers[layer].mixer.ssm(u, return_last_state=True)
    torch.testing.assert_close(tr["states"][-1], last[0], **{"rtol": 6e-4, "atol": 2e-3})
    with pytest.raises(ValueError, match="model"):
        tasks.s6_trace(build_model(TrainConfig(task="selective_copy", model="s4")), tokens)


def test_attention_trace_rows_are_causal_distributions():
    model = build_model(TrainConfig(task="induction", model="attention", d_model=16)).eval()
    w = tasks.attention_trace(model, torch.randint(0, 9, (10,)), layer=0)
    assert w.shape == (model.cfg.n_head, 10, 10)
    torch.testing.assert_close(w.sum(-1), torch.ones(model.cfg.n_head, 10))
    assert (w.triu(1) == 0).all()
    with pytest.raises(ValueError, match="model"):
        tasks.attention_trace(build_model(TrainConfig(task="induction")), torch.zeros(4).long())

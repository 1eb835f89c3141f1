"""Synthetic tasks that separate LTI SSMs, selective SSMs and attention (chapter 05).

Selective copying and induction heads (Gu & Dao 2023, section 4.1 and table 2): seeded data
generators, accuracy at any test length, and views of what a trained model's S6 state and
attention weights hold. The models are `mambabook.models`' and `mambabook.train` trains them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .attention import attention_weights
from .checks import check_positive_int
from .models import MambaLM, TransformerLM

TASKS = ("selective_copy", "induction")
IGNORE = -100  # target value of positions that are not scored
BLANK, MARK = 0, 1  # selective copy: noise token and "now copy" marker; data tokens 2..V+1


# ----------------------------------------------------------------------------- data
def selective_copy_batch(batch: int, L: int, n_memorize: int = 4, vocab: int = 8,
                         generator: torch.Generator | None = None):
    """Selective copying: n_memorize data tokens at random places among L positions of noise.

    The model reads L positions (data tokens 2..vocab+1 scattered among BLANKs), then
    n_memorize MARK tokens; at each MARK it must output the data tokens in order.
    -> tokens (B, L + K) int64, targets (B, L + K) with IGNORE except the last K positions.
    """
    check_positive_int("L", L), check_positive_int("n_memorize", n_memorize)
    if n_memorize > L:
        raise ValueError(f"n_memorize must be <= L = {L}, got {n_memorize}")
    K = n_memorize
    data = torch.randint(2, vocab + 2, (batch, K), generator=generator)  # (B, K)
    pos = torch.rand(batch, L, generator=generator).argsort(dim=1)[:, :K].sort(dim=1).values
    tokens = torch.full((batch, L + K), BLANK, dtype=torch.long)
    tokens.scatter_(1, pos, data)
    tokens[:, L:] = MARK
    targets = torch.full_like(tokens, IGNORE)
    targets[:, L:] = data
    return tokens, targets


def induction_batch(batch: int, L: int, vocab: int = 16, generator: torch.Generator | None = None):
    """Induction heads: a trigger token appears once followed by X; at the end the trigger
    appears again and the model must output X.

    Content tokens are 1..vocab, the trigger is 0. -> tokens, targets (B, L); only the last
    position is scored.
    """
    check_positive_int("L", L)
    if L < 4:
        raise ValueError(f"L must be >= 4 for induction heads, got {L}")
    tokens = torch.randint(1, vocab + 1, (batch, L), generator=generator)  # (B, L)
    p = torch.randint(0, L - 3, (batch,), generator=generator)  # trigger position
    rows = torch.arange(batch)
    tokens[rows, p] = 0
    answer = tokens[rows, p + 1]  # (B,)
    tokens[:, -1] = 0
    targets = torch.full_like(tokens, IGNORE)
    targets[:, -1] = answer
    return tokens, targets


def make_batch(task: str, batch: int, L: int, vocab: int, n_memorize: int,
               generator: torch.Generator | None = None):
    if task == "selective_copy":
        return selective_copy_batch(batch, L, n_memorize, vocab, generator)
    if task == "induction":
        return induction_batch(batch, L, vocab, generator)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def vocab_size(task: str, vocab: int) -> int:
    """Number of token ids the model embeds: data tokens plus the special ones."""
    return vocab + 2 if task == "selective_copy" else vocab + 1


@torch.no_grad()
def accuracy(model, cfg, L: int, n: int = 256, seed: int = 12345, batch: int = 64) -> float:
    """Accuracy over the scored positions of n fresh sequences of length L (seeded).

    cfg: anything with task, vocab and n_memorize (a mambabook.train.TrainConfig).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + L)
    correct = total = 0
    for start in range(0, n, batch):
        tokens, targets = make_batch(cfg.task, min(batch, n - start), L, cfg.vocab,
                                     cfg.n_memorize, gen)
        tokens, targets = tokens.to(device), targets.to(device)
        pred = model(tokens).argmax(-1)  # (B, L)
        mask = targets != IGNORE
        correct += (pred[mask] == targets[mask]).sum().item()
        total += mask.sum().item()
    model.train(was_training)
    return correct / total


# ----------------------------------------------------------------------------- analysis
def lti_least_squares_copy(n: int = 2000, L: int = 32, n_memorize: int = 4, vocab: int = 8,
                           gated: bool = False, seed: int = 0) -> float:
    """Best linear time-invariant readout for selective copying, fit by least squares.

    The k-th marker's output is a fixed linear function of the one-hot tokens at each lag
    (one kernel shared by all output positions: y_t = sum_j K_j onehot(u_{t-j})). With
    gated=True the BLANK tokens are first removed, as a selective SSM does with delta -> 0:
    time only advances on data tokens. Returns the accuracy on n fresh held-out sequences.
    """
    V = vocab + 2

    def features(seed_):
        gen = torch.Generator().manual_seed(seed_)
        tokens, targets = selective_copy_batch(n, L, n_memorize, vocab, gen)
        if gated:
            keep = tokens != BLANK  # (B, L + K): data then markers
            tokens = tokens[keep].view(n, -1)  # (B, 2K)
            targets = targets[keep].view(n, -1)
        T = tokens.shape[1]
        onehot = F.one_hot(tokens, V).double().numpy()  # (B, T, V)
        X, Y = [], []
        for k in range(n_memorize):
            t = T - n_memorize + k  # position of the k-th marker
            lagged = onehot[:, t::-1]  # (B, t+1, V): lag 0 .. t
            X.append(np.pad(lagged, ((0, 0), (0, T - t - 1), (0, 0))).reshape(n, -1))
            Y.append(targets[:, t].numpy())
        return np.concatenate(X), np.concatenate(Y)

    X, y = features(seed)
    W, *_ = np.linalg.lstsq(X, np.eye(V)[y], rcond=None)  # (lags * V, V)
    X2, y2 = features(seed + 1)
    return float(((X2 @ W).argmax(1) == y2).mean())


@torch.no_grad()
def s6_trace(model: MambaLM, tokens: torch.Tensor, layer: int = 0) -> dict:
    """What one S6 layer does on one sequence, token by token.

    tokens: (L,) -> delta (L, D), the states h_t (L, D, N), and memory (L, L): memory[t, s]
    is the size of token s's contribution to h_t, ||exp(A sum_{r=s+1..t} delta_r) delta_s B_s u_s||,
    normalised per row. The state holds D x N numbers whatever t is.
    """
    if not isinstance(model, MambaLM) or model.cfg.ssm != "s6":
        raise ValueError(f"model must be a MambaLM with ssm='s6', got {type(model).__name__}")
    x = model.embedding(tokens[None])  # (1, L, d_model): the residual stream
    for res in model.layers[:layer]:
        x = x + res.mixer(res.norm(x))
    res = model.layers[layer]
    u, _, _ = res.mixer.inner(res.norm(x))  # (1, D, L): the SSM's input
    ssm = res.mixer.ssm
    delta, Bt, _ = ssm.ssm_params(u)  # (1, D, L), (1, N, L)
    delta, Bt, u = delta[0].T, Bt[0].T, u[0].T  # (L, D), (L, N), (L, D)
    A = ssm.A  # (D, N)
    h = torch.zeros_like(A)
    states = []
    for t in range(len(tokens)):
        h = torch.exp(delta[t, :, None] * A) * h + delta[t, :, None] * Bt[t] * u[t, :, None]
        states.append(h.clone())
    states = torch.stack(states)  # (L, D, N)
    cum = torch.cumsum(delta, 0)  # (L, D)
    L = len(tokens)
    decay = torch.exp((cum[:, None, :] - cum[None, :, :])[..., None] * A)  # (L_t, L_s, D, N)
    write = (delta[:, :, None] * Bt[:, None, :] * u[:, :, None])  # (L_s, D, N)
    contrib = (decay * write[None]).pow(2).sum((-1, -2)).sqrt()  # (L_t, L_s)
    contrib = contrib * torch.ones(L, L).tril()
    memory = contrib / contrib.amax(1, keepdim=True).clamp_min(1e-12)
    return {"delta": delta, "states": states, "memory": memory}




@torch.no_grad()
def attention_trace(model: TransformerLM, tokens: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The causal attention weights of one layer on one sequence: tokens (L,) -> (H, L, L)."""
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM, got {type(model).__name__}")
    positions = torch.arange(len(tokens), device=tokens.device)
    x = model.embed(tokens[None], positions)  # (1, L, d_model)
    for lay in model.layers[:layer]:
        x = lay(x, positions)
    q, k, _ = model.layers[layer].qkv_heads(x, positions)  # (1, H, L, P)
    return attention_weights(q, k)[0]  # (H, L, L)

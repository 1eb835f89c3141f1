"""Synthetic tasks that separate LTI SSMs, selective SSMs and attention (chapter 05).

Selective copying and induction heads (Gu & Dao 2023, section 4.1 and table 2): seeded data
generators, three tiny models of the same size (LTI S4D, selective S6, attention), a small
training loop with length-extrapolation evaluation, and `python -m mambabook.tasks train`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_positive_int
from .selective import S6
from .ssm import S4D

TASKS = ("selective_copy", "induction")
MODELS = ("s4", "s6", "attention")
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


# ----------------------------------------------------------------------------- models
class MambaStyleBlock(nn.Module):
    """in_proj -> (x, z); causal depthwise conv + SiLU on x; SSM (S4D or S6); * SiLU(z); out_proj.

    x: (B, L, d_model) -> (B, L, d_model). The only difference between "s4" and "s6" is the SSM:
    a fixed kernel (one delta, B, C per channel) or delta, B, C computed from each token.
    """

    def __init__(self, d_model: int, d_state: int, expand: int = 2, d_conv: int = 4,
                 selective: bool = True):
        super().__init__()
        d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.ssm = S6(d_inner, d_state) if selective else S4D(d_inner, d_state)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def inner(self, x: torch.Tensor):
        """x: (B, L, d_model) -> the SSM input u (B, D, L) and the gate z (B, D, L)."""
        L = x.shape[1]
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, D, L) each
        u = F.silu(self.conv(u)[..., :L])  # (B, D, L) causal
        return u, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.inner(x)
        if isinstance(self.ssm, S6):
            y = self.ssm(u, z=z)  # (B, D, L), gated inside the scan
        else:
            y = self.ssm(u) * F.silu(z)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding on the last dim of x: (B, H, L, P) -> same."""
    L, P = x.shape[-2], x.shape[-1]
    freq = base ** (-torch.arange(0, P, 2, device=x.device, dtype=torch.float32) / P)  # (P/2,)
    ang = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * freq  # (L, P/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class AttentionBlock(nn.Module):
    """Causal multi-head self-attention with RoPE, then an MLP (each pre-norm, residual)."""

    def __init__(self, d_model: int, n_heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def qk(self, x: torch.Tensor):
        """x: (B, L, d_model) -> q, k, v: (B, H, L, P), RoPE applied to q and k."""
        Bsz, L, d = x.shape
        q, k, v = self.qkv(x).view(Bsz, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return rope(q), rope(k), v

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(P)) with the causal mask: (B, H, L, L)."""
        q, k, _ = self.qk(x)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, L)
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=x.device).triu(1)
        return s.masked_fill(mask, float("-inf")).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qk(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, P)
        x = self.out(y.transpose(1, 2).flatten(2))  # (B, L, d_model)
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    """Embedding -> n_layers x (pre-norm mixer + residual) -> norm -> logits (B, L, vocab)."""

    def __init__(self, kind: str, n_tokens: int, d_model: int = 32, n_layers: int = 2,
                 d_state: int = 16, n_heads: int = 4):
        super().__init__()
        if kind not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {kind!r}")
        self.kind = kind
        self.embed = nn.Embedding(n_tokens, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        if kind == "attention":
            blocks = [AttentionBlock(d_model, n_heads) for _ in range(n_layers)]
        else:
            blocks = [MambaStyleBlock(d_model, d_state, selective=kind == "s6") for _ in range(n_layers)]
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_tokens, bias=False)

    def hidden(self, tokens: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Residual stream after the first `upto` blocks (all by default): (B, L, d_model)."""
        x = self.embed(tokens)
        for norm, block in list(zip(self.norms, self.blocks))[:upto]:
            x = x + block(norm(x))
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm_f(self.hidden(tokens)))  # (B, L, vocab)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    task: str = "selective_copy"  # "selective_copy" or "induction"
    model: str = "s6"  # "s4", "s6" or "attention"
    seed: int = 0  # seeds the initialisation and every training batch
    L: int = 32  # training length (selective copy: positions before the markers)
    vocab: int = 8  # data tokens
    n_memorize: int = 4  # selective copy: tokens to copy
    d_model: int = 32  # model width (the SSM channels are 2 * d_model)
    n_layers: int = 2  # blocks
    d_state: int = 16  # N
    steps: int = 2000  # optimizer steps
    batch: int = 32  # sequences per step
    lr: float = 5e-3  # peak AdamW learning rate (linear warm-up, cosine decay)
    weight_decay: float = 0.1  # AdamW
    eval_multipliers: list = field(default_factory=lambda: [1, 2, 4, 8, 16])  # test at m * L
    eval_batch: int = 256  # sequences per evaluation length
    device: str = "cpu"  # "cpu" or "cuda"


def build_model(cfg: TrainConfig) -> SequenceModel:
    return SequenceModel(cfg.model, vocab_size(cfg.task, cfg.vocab), cfg.d_model, cfg.n_layers,
                         cfg.d_state)


@torch.no_grad()
def evaluate(model: SequenceModel, cfg: TrainConfig, L: int, n: int | None = None,
             seed: int = 12345, batch: int = 64) -> float:
    """Accuracy over the scored positions of n fresh sequences of length L (seeded)."""
    model.eval()
    n = n or cfg.eval_batch
    gen = torch.Generator().manual_seed(seed + L)
    correct = total = 0
    for start in range(0, n, batch):
        tokens, targets = make_batch(cfg.task, min(batch, n - start), L, cfg.vocab,
                                     cfg.n_memorize, gen)
        tokens, targets = tokens.to(cfg.device), targets.to(cfg.device)
        pred = model(tokens).argmax(-1)  # (B, L)
        mask = targets != IGNORE
        correct += (pred[mask] == targets[mask]).sum().item()
        total += mask.sum().item()
    model.train()
    return correct / total


def train(cfg: TrainConfig, progress: bool = True):
    """Train one model on one task; -> (model, metrics dict with loss curve and accuracies)."""
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    losses = []
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc=f"{cfg.model} on {cfg.task}", disable=not progress, leave=False)
    for _ in bar:
        tokens, targets = make_batch(cfg.task, cfg.batch, cfg.L, cfg.vocab, cfg.n_memorize, gen)
        tokens, targets = tokens.to(cfg.device), targets.to(cfg.device)
        logits = model(tokens)  # (B, L, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    accuracy = {str(m * cfg.L): evaluate(model, cfg, m * cfg.L) for m in cfg.eval_multipliers}
    metrics = {"config": asdict(cfg), "parameters": count_parameters(model),
               "loss": losses, "accuracy": accuracy}
    return model, metrics


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dir() -> Path:
    """checkpoints/ at the repository root (or $MAMBABOOK_CHECKPOINTS)."""
    from .bench import REPO_ROOT

    return Path(os.environ.get("MAMBABOOK_CHECKPOINTS", REPO_ROOT / "checkpoints"))


def checkpoint_name(task: str, model: str, seed: int) -> str:
    return f"{task}_{model}_seed{seed}"


def save_checkpoint(model: SequenceModel, metrics: dict, folder: Path | None = None) -> Path:
    """Writes <name>.pt (state dict + config) and <name>.json (metrics); returns the .pt path."""
    cfg = metrics["config"]
    folder = Path(folder) if folder is not None else checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(cfg["task"], cfg["model"], cfg["seed"])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": cfg, "state_dict": state}, folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return folder / f"{name}.pt"


def load_checkpoint(task: str, model: str, seed: int = 0, folder: Path | None = None):
    """-> (model in eval mode, its TrainConfig, its metrics), or None when no checkpoint exists."""
    folder = Path(folder) if folder is not None else checkpoint_dir()
    name = checkpoint_name(task, model, seed)
    if not (folder / f"{name}.pt").exists():
        return None
    payload = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    cfg = TrainConfig(**{**payload["config"], "device": "cpu"})
    net = build_model(cfg)
    net.load_state_dict(payload["state_dict"])
    metrics = json.loads((folder / f"{name}.json").read_text())
    return net.eval(), cfg, metrics


def train_command(cfg: TrainConfig) -> str:
    """The command line that reproduces a checkpoint."""
    d = TrainConfig()
    args = [f"--task {cfg.task}", f"--model {cfg.model}", f"--seed {cfg.seed}"]
    for k in ("L", "vocab", "n_memorize", "d_model", "n_layers", "d_state", "steps", "batch", "lr"):
        if getattr(cfg, k) != getattr(d, k):
            args.append(f"--{k.replace('_', '-')} {getattr(cfg, k)}")
    return "python -m mambabook.tasks train " + " ".join(args)


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
def s6_trace(model: SequenceModel, tokens: torch.Tensor, layer: int = 0) -> dict:
    """What one S6 layer does on one sequence, token by token.

    tokens: (L,) -> delta (L, D), the states h_t (L, D, N), and memory (L, L): memory[t, s]
    is the size of token s's contribution to h_t, ||exp(A sum_{r=s+1..t} delta_r) delta_s B_s u_s||,
    normalised per row. The state holds D x N numbers whatever t is.
    """
    if model.kind != "s6":
        raise ValueError(f"model must be an 's6' SequenceModel, got {model.kind!r}")
    x = model.hidden(tokens[None], upto=layer)
    block = model.blocks[layer]
    u, _ = block.inner(model.norms[layer](x))  # (1, D, L)
    ssm = block.ssm
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


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambabook.tasks", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train one model and save checkpoint + metrics JSON")
    d = TrainConfig()
    tr.add_argument("--task", choices=TASKS, default=d.task)
    tr.add_argument("--model", choices=MODELS, default=d.model)
    for k in ("seed", "L", "vocab", "n_memorize", "d_model", "n_layers", "d_state", "steps", "batch"):
        tr.add_argument(f"--{k.replace('_', '-')}", type=int, default=getattr(d, k))
    tr.add_argument("--lr", type=float, default=d.lr)
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tr.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1 is fastest for these tiny models on a busy machine)")
    tr.add_argument("--out", default=None, help="folder (default: checkpoints/ at the repo root)")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("cmd", "out", "threads")})
    torch.set_num_threads(args.threads)
    model, metrics = train(cfg)
    metrics["command"] = train_command(cfg)
    path = save_checkpoint(model, metrics, args.out)
    print(f"{cfg.model} on {cfg.task}: {metrics['parameters']} parameters, final loss "
          f"{np.mean(metrics['loss'][-20:]):.3f}, accuracy by length {metrics['accuracy']} -> {path}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a byte-level MambaLM or TransformerLM on the Python standard library (chapter 08).

Seeded, CPU or GPU, AdamW with warmup then cosine (or constant) learning rate; records the
training and validation loss curves against steps and wall-clock seconds, and saves a small
checkpoint (float16 weights) plus the curves as JSON:

    python -m mambabook.lm_train --model mamba --steps 600 --seed 0 --out checkpoints/mamba_small
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import bench
from .checks import check_positive_int
from .corpus import load_corpus, sample_batch
from .models import (
    MambaConfig,
    MambaLM,
    TransformerConfig,
    TransformerLM,
    count_parameters,
    matched_transformer_config,
)


@dataclass
class TrainConfig:
    model: str = "mamba"  # "mamba" or "transformer"
    d_model: int = 64  # width of both models
    n_layer: int = 4  # Mamba blocks; the Transformer gets n_layer / 2 layers of equal size
    d_state: int = 16  # N of the Mamba blocks
    seq_len: int = 128  # L: training window in bytes
    batch: int = 16  # B: windows per step
    steps: int = 200  # optimizer steps (training may stop earlier at max_seconds)
    lr: float = 3e-3  # peak learning rate
    schedule: str = "cosine"  # "cosine" (to 10% of lr) or "constant", both after warmup
    warmup: int = 20  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    eval_every: int = 50  # validation loss every this many steps (and at the end)
    eval_batches: int = 4  # fixed validation batches of (batch, seq_len)
    max_bytes: int = 4_000_000  # corpus size cap (train + validation)
    max_seconds: float | None = None  # wall-clock cap on the training loop
    seed: int = 0  # seeds the model initialisation and the batch sampler

    def __post_init__(self):
        if self.model not in ("mamba", "transformer"):
            raise ValueError(f"model must be 'mamba' or 'transformer', got {self.model!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("d_model", "n_layer", "d_state", "seq_len", "batch", "steps", "eval_every",
                     "eval_batches", "max_bytes"):
            check_positive_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def build_model(cfg: TrainConfig):
    """The MambaLM, or the Transformer matched to it in parameter count."""
    mcfg = MambaConfig(d_model=cfg.d_model, n_layer=cfg.n_layer, d_state=cfg.d_state)
    if cfg.model == "mamba":
        return MambaLM(mcfg)
    return TransformerLM(matched_transformer_config(mcfg))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then constant or cosine decay to 0.1 * lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _optimizer(model, cfg: TrainConfig):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def lm_loss(model, x, y):
    """Mean next-byte cross-entropy in nats: x, y (B, L)."""
    logits = model(x)  # (B, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model, batches) -> float:
    model.eval()
    loss = sum(lm_loss(model, x, y).item() for x, y in batches) / len(batches)
    model.train()
    return loss


def train(cfg: TrainConfig, device=None, corpus=None, progress: bool = True) -> dict:
    """Train one model; returns {"model", "config", "params", "curve"}.

    curve holds step, train_loss, seconds (wall clock since the start of the loop, eval time
    excluded) and val_step, val_loss, val_seconds. On CUDA matmuls use TF32.
    """
    device = torch.device(device) if device is not None else bench.default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    corpus = corpus if corpus is not None else load_corpus(cfg.max_bytes)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    val_gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    val_batches = [sample_batch(corpus.val, cfg.batch, cfg.seq_len, val_gen, device)
                   for _ in range(cfg.eval_batches)]
    curve = {"step": [], "train_loss": [], "seconds": [], "val_step": [], "val_loss": [],
             "val_seconds": []}
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc=f"train {cfg.model}", disable=not progress, leave=False)
    elapsed = 0.0
    for step in bar:
        t0 = time.perf_counter()  # wall clock for the loss curve's x axis (not a benchmark)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = sample_batch(corpus.train, cfg.batch, cfg.seq_len, gen, device)
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()  # synchronises the device
        elapsed += time.perf_counter() - t0
        curve["step"].append(step + 1)
        curve["train_loss"].append(loss_value)
        curve["seconds"].append(elapsed)
        last = step + 1 == cfg.steps or (cfg.max_seconds is not None and elapsed >= cfg.max_seconds)
        if (step + 1) % cfg.eval_every == 0 or last:
            curve["val_step"].append(step + 1)
            curve["val_loss"].append(evaluate(model, val_batches))
            curve["val_seconds"].append(elapsed)
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{curve['val_loss'][-1]:.3f}")
        if last and step + 1 < cfg.steps:  # stopped early by max_seconds
            break  # (a break on the final step would leave the progress bar one short, in red)
    bar.close()
    return {"model": model, "config": asdict(cfg), "params": count_parameters(model),
            "model_config": asdict(model.cfg), "curve": curve, "device": str(device),
            "corpus": corpus.describe()}


def save_checkpoint(result: dict, out: str | Path) -> tuple[Path, Path]:
    """out.pt (float16 weights + configs) and out.json (configs, parameter count, curves)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16) for k, v in result["model"].state_dict().items()}
    meta = {k: result[k] for k in ("config", "model_config", "params", "curve", "device", "corpus")}
    torch.save({"state_dict": state, **{k: meta[k] for k in ("config", "model_config")}},
               out.with_suffix(".pt"))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return out.with_suffix(".pt"), out.with_suffix(".json")


def load_checkpoint(path: str | Path, device="cpu"):
    """(model in float32 on device, metadata dict with the curves) from out.pt / out.json."""
    path = Path(path)
    if not path.with_suffix(".pt").exists():
        raise ValueError(f"path must name a checkpoint (.pt), got {str(path)!r}")
    ckpt = torch.load(path.with_suffix(".pt"), map_location="cpu", weights_only=True)
    kind = ckpt["config"]["model"]
    model = (MambaLM(MambaConfig(**ckpt["model_config"])) if kind == "mamba"
             else TransformerLM(TransformerConfig(**ckpt["model_config"])))
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return model.to(device).eval(), meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambabook.lm_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    parser.add_argument("--model", choices=["mamba", "transformer"], required=True)
    for name in ("d_model", "n_layer", "d_state", "seq_len", "batch", "steps", "warmup",
                 "eval_every", "eval_batches", "max_bytes", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--schedule", choices=["cosine", "constant"], default=defaults.schedule)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="path without suffix: writes .pt and .json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items()
                         if k not in ("device", "threads", "out")})
    result = train(cfg, device=args.device)
    pt, js = save_checkpoint(result, args.out)
    c = result["curve"]
    print(f"{cfg.model}: {result['params']:,} parameters, {c['step'][-1]} steps in "
          f"{c['seconds'][-1]:.1f} s, final val loss {c['val_loss'][-1]:.4f} nats/byte")
    print(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

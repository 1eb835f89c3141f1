"""One training stack for every model in the book (chapters 5 and 8).

A `TrainConfig` names the task (selective copying, induction heads, or the next byte of the
Python standard library), the sequence mixer (S6, S4D or attention, in the models of
`mambabook.models`) and the recipe (AdamW, linear warmup, cosine or constant learning rate).
`train` runs it and records loss curves; `save_checkpoint` / `load_checkpoint` keep one
format ({task}_{model}_seed{seed}.pt with float32 weights, .json with the curves):

    python -m mambabook.train --task stdlib --model s6 --steps 300 --threads 1

Data-parallel on R processes (DistributedDataParallel: gloo on a CPU, NCCL on GPUs), with
the results of one process at the same global batch and the checkpoint written by rank 0:

    torchrun --standalone --nproc-per-node R -m mambabook.train --task stdlib --model s6 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import tasks
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

TASKS = (*tasks.TASKS, "stdlib")
MODELS = ("s4", "s6", "attention")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainConfig:
    task: str = "stdlib"  # "selective_copy", "induction" or "stdlib" (next byte)
    model: str = "s6"  # mixer: "s6" (Mamba), "s4" (Mamba block, S4D SSM), "attention"
    seed: int = 0  # seeds the initialisation and every batch
    d_model: int = 64  # width of every model
    n_layer: int = 4  # Mamba blocks; the attention model gets n_layer / 2 layers, equal size
    d_state: int = 16  # N of the SSM
    n_head: int | None = None  # attention heads; None: d_model // 64, at least 1
    L: int = 128  # training length (selective copy: positions before the markers)
    batch: int = 16  # sequences per step
    steps: int = 200  # optimizer steps (training may stop earlier at max_seconds)
    lr: float = 3e-3  # peak learning rate
    warmup: int = 20  # linear warmup steps
    schedule: str = "cosine"  # "cosine" (to 10% of lr) or "constant", after warmup
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    eval_every: int = 50  # validation loss every this many steps (and at the end)
    eval_batches: int = 4  # fixed validation batches of (batch, L)
    max_seconds: float | None = None  # wall-clock cap on the training loop
    vocab: int = 8  # tasks: data tokens
    n_memorize: int = 4  # selective copy: tokens to copy
    test_lengths: list = field(default_factory=lambda: [1, 2, 4, 8, 16])  # tasks: m * L
    test_batch: int = 256  # tasks: sequences per test length
    max_bytes: int = 4_000_000  # stdlib: corpus size cap (train + validation)

    def __post_init__(self):
        for name, allowed in (("task", TASKS), ("model", MODELS),
                              ("schedule", ("cosine", "constant"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("d_model", "n_layer", "d_state", "L", "batch", "steps", "eval_every",
                     "eval_batches", "vocab", "n_memorize", "test_batch", "max_bytes"):
            check_positive_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def build_model(cfg: TrainConfig):
    """A MambaLM (S6 or S4D blocks), or the TransformerLM of equal size (n_layer / 2 layers)."""
    vocab = 256 if cfg.task == "stdlib" else tasks.vocab_size(cfg.task, cfg.vocab)
    mcfg = MambaConfig(vocab_size=vocab, d_model=cfg.d_model, n_layer=cfg.n_layer,
                       d_state=cfg.d_state, ssm="s4d" if cfg.model == "s4" else "s6")
    if cfg.model == "attention":
        return TransformerLM(matched_transformer_config(mcfg, n_head=cfg.n_head))
    return MambaLM(mcfg)


# ----------------------------------------------------------------------------- data
def rank_and_ranks() -> tuple[int, int]:
    """(this rank, the number of ranks R) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Batches:
    """Training and validation batches (x, y) of shape (batch, L) for one config.

    stdlib: windows of the corpus' training files, validation from its held-out files;
    tasks: fresh sequences from the task's generator, validation from a fixed seed.
    Inside a process group of R ranks a training batch is this rank's batch / R rows of
    the global batch (every rank draws the whole of it from the same generator);
    validation batches are whole on every rank.
    """

    def __init__(self, cfg: TrainConfig, device, corpus=None):
        self.cfg, self.device = cfg, device
        rank, ranks = rank_and_ranks()
        if cfg.batch % ranks:
            raise ValueError(f"batch must be a multiple of the number of ranks ({ranks}), "
                             f"got {cfg.batch}")
        self.rows = slice(rank * cfg.batch // ranks, (rank + 1) * cfg.batch // ranks)
        if cfg.task == "stdlib":
            self.corpus = corpus if corpus is not None else load_corpus(cfg.max_bytes)
        val_gen = torch.Generator().manual_seed(10_000 + cfg.seed)
        self.val = [self.sample(val_gen, train=False) for _ in range(cfg.eval_batches)]

    def sample(self, gen: torch.Generator, train: bool = True):
        """(x, y): a training batch (this rank's rows), or a whole validation batch."""
        cfg = self.cfg
        if cfg.task == "stdlib":
            data = self.corpus.train if train else self.corpus.val
            x, y = sample_batch(data, cfg.batch, cfg.L, gen)  # (batch, L) each
        else:
            x, y = tasks.make_batch(cfg.task, cfg.batch, cfg.L, cfg.vocab, cfg.n_memorize, gen)
        rows = self.rows if train else slice(None)
        return x[rows].to(self.device), y[rows].to(self.device)

    def describe(self) -> str:
        if self.cfg.task == "stdlib":
            return self.corpus.describe()
        return f"{self.cfg.task}: fresh sequences at L = {self.cfg.L}"


# ----------------------------------------------------------------------------- the loop
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then constant or cosine decay to 0.1 * lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, betas (0.9, 0.95); weight decay on matrices only (not norms, biases, A, D)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def loss_fn(model, x, y):
    """Mean cross-entropy in nats over the scored positions (y != tasks.IGNORE): x, y (B, L)."""
    logits = model(x)  # (B, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=tasks.IGNORE)


@torch.no_grad()
def evaluate(model, batches) -> float:
    """Mean loss over a list of (x, y) batches, in eval mode."""
    was_training = model.training
    model.eval()
    loss = sum(loss_fn(model, x, y).item() for x, y in batches) / len(batches)
    model.train(was_training)
    return loss


def train_step(model, opt, x, y) -> torch.Tensor:
    """One optimizer step on (x, y); gradients clipped to norm 1. Returns the loss."""
    loss = loss_fn(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def train(cfg: TrainConfig, device=None, corpus=None, progress: bool = True) -> dict:
    """Train one model; returns {"model", "config", "model_config", "params", "curve",
    "device", "data"} and, for the synthetic tasks, "accuracy" at every test length.

    curve holds step, train_loss, seconds (wall clock of the loop, evaluation excluded) and
    val_step, val_loss, val_seconds. On CUDA matmuls use TF32.
    Inside a process group of R ranks (torchrun), data-parallel: each rank trains on its
    batch / R rows of the global batch and DistributedDataParallel averages the gradients,
    so a step equals one process's step on the whole batch (every row scores as many
    positions in each task); train_loss is the mean over ranks, a time limit stops every
    rank at the same step, and every rank evaluates the same validation batches.
    """
    rank, ranks = rank_and_ranks()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if ranks > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = Batches(cfg, device, corpus)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    net = model if ranks == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve = {k: [] for k in ("step", "train_loss", "seconds", "val_step", "val_loss",
                             "val_seconds")}
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc=f"{cfg.model} on {cfg.task}",
               disable=not progress or rank > 0, leave=False)
    elapsed = 0.0
    for step in bar:
        t0 = time.perf_counter()  # wall clock for the loss curve's x axis (not a benchmark)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = train_step(net, opt, *batches.sample(gen)).item()  # .item() synchronises
        elapsed += time.perf_counter() - t0
        last = step + 1 == cfg.steps or (cfg.max_seconds is not None and elapsed >= cfg.max_seconds)
        if ranks > 1:  # the mean loss over ranks; stop when any rank runs out of time
            both = torch.tensor([loss, float(last)], device=device)
            dist.all_reduce(both)
            loss, last = both[0].item() / ranks, both[1].item() > 0
        curve["step"].append(step + 1)
        curve["train_loss"].append(loss)
        curve["seconds"].append(elapsed)
        if (step + 1) % cfg.eval_every == 0 or last:
            curve["val_step"].append(step + 1)
            curve["val_loss"].append(evaluate(model, batches.val))
            curve["val_seconds"].append(elapsed)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{curve['val_loss'][-1]:.3f}")
        if last and step + 1 < cfg.steps:  # stopped early by max_seconds
            break  # (a break on the final step would leave the progress bar one short, in red)
    bar.close()
    model.eval()
    result = {"model": model, "config": asdict(cfg), "model_config": asdict(model.cfg),
              "params": count_parameters(model), "curve": curve, "device": str(device),
              "data": batches.describe(), "ranks": ranks}
    if cfg.task != "stdlib":
        result["accuracy"] = {str(m * cfg.L): tasks.accuracy(model, cfg, m * cfg.L,
                                                             cfg.test_batch)
                              for m in cfg.test_lengths}
    return result


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dir() -> Path:
    """checkpoints/ at the repository root (or $MAMBABOOK_CHECKPOINTS)."""
    return Path(os.environ.get("MAMBABOOK_CHECKPOINTS", REPO_ROOT / "checkpoints"))


def checkpoint_name(task: str, model: str, seed: int = 0) -> str:
    return f"{task}_{model}_seed{seed}"


def save_checkpoint(result: dict, folder: str | Path | None = None) -> Path:
    """<name>.pt (float32 weights + configs) and <name>.json (everything but the weights,
    with the command that reproduces it); returns the .pt path."""
    folder = Path(folder) if folder is not None else checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    name = checkpoint_name(cfg["task"], cfg["model"], cfg["seed"])
    state = {k: v.detach().to("cpu", torch.float32) for k, v in result["model"].state_dict().items()}
    torch.save({"state_dict": state, "config": cfg, "model_config": result["model_config"]},
               folder / f"{name}.pt")
    meta = {k: v for k, v in result.items() if k != "model"}
    meta["command"] = train_command(TrainConfig(**cfg), result.get("ranks", 1))
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder / f"{name}.pt"


def load_checkpoint(task: str, model: str, seed: int = 0, folder: str | Path | None = None,
                    device="cpu"):
    """-> (model in eval mode on device, its TrainConfig, its metrics dict), or None when
    no checkpoint of that name exists."""
    folder = Path(folder) if folder is not None else checkpoint_dir()
    path = folder / f"{checkpoint_name(task, model, seed)}.pt"
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrainConfig(**ckpt["config"])
    net = (TransformerLM(TransformerConfig(**ckpt["model_config"])) if cfg.model == "attention"
           else MambaLM(MambaConfig(**ckpt["model_config"])))
    net.load_state_dict(ckpt["state_dict"])
    metrics = json.loads(path.with_suffix(".json").read_text())
    return net.to(device).eval(), cfg, metrics


# ----------------------------------------------------------------------------- CLI
def _options() -> list[dataclasses.Field]:
    """The TrainConfig fields the command line sets (numbers and names, not lists)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in ("test_lengths",)]


def train_command(cfg: TrainConfig, ranks: int = 1) -> str:
    """The command line that reproduces a checkpoint of cfg trained on `ranks` processes."""
    default = TrainConfig()
    args = [f"--task {cfg.task}", f"--model {cfg.model}", f"--seed {cfg.seed}"]
    for f in _options():
        value = getattr(cfg, f.name)
        if f.name not in ("task", "model", "seed") and value != getattr(default, f.name):
            args.append(f"--{f.name.replace('_', '-')} {value}")
    launch = ("python -m" if ranks == 1
              else f"torchrun --standalone --nproc-per-node {ranks} -m")
    return f"{launch} mambabook.train " + " ".join(args + ["--threads 1"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambabook.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = TrainConfig()
    types = {"int": int, "float": float, "str": str, "float | None": float, "int | None": int}
    for f in _options():
        parser.add_argument("--" + f.name.replace("_", "-"), type=types[str(f.type)],
                            default=getattr(default, f.name))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest for these small models)")
    parser.add_argument("--out", default=None, help="folder (default: checkpoints/)")
    args = vars(parser.parse_args(argv))
    device, threads, out = args.pop("device"), args.pop("threads"), args.pop("out")
    if threads:
        torch.set_num_threads(threads)
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:  # one of torchrun's processes: join the others
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        result = train(TrainConfig(**args), device=device)
        rank = rank_and_ranks()[0]
    finally:
        if started:
            dist.destroy_process_group()
    if rank > 0:
        return 0  # rank 0 writes the checkpoint and reports
    path = save_checkpoint(result, out)
    c = result["curve"]
    print(f"{args['model']} on {args['task']}: {result['params']:,} parameters, "
          f"{c['step'][-1]} steps in {c['seconds'][-1]:.1f} s on {result['ranks']} "
          f"process(es), final val loss "
          f"{c['val_loss'][-1]:.4f} nats" + (f", accuracy by length {result['accuracy']}"
                                             if "accuracy" in result else ""))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

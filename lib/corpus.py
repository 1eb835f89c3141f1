"""Training text every machine has offline: the Python standard library's own source code.

Files are read from the running interpreter's installation (sysconfig's "stdlib" path,
site-packages and caches excluded) in sorted order, as bytes (vocabulary of 256), and
assigned to train or validation by a hash of their relative path. Used in chapter 08.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checks import check_positive_int

VOCAB_SIZE = 256  # byte-level: a token is one byte
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3", "test",
              "tests", "turtledemo", "ensurepip"}


@dataclass
class Corpus:
    """A byte corpus split by file into train and validation."""

    train: np.ndarray  # uint8 bytes of the training files, concatenated
    val: np.ndarray  # uint8 bytes of the validation files
    train_files: list  # relative paths, sorted
    val_files: list  # relative paths, sorted
    root: str  # where the files were read from

    def describe(self) -> str:
        return (f"{len(self.train_files)} train files ({len(self.train) / 1e6:.2f} MB), "
                f"{len(self.val_files)} validation files ({len(self.val) / 1e6:.2f} MB) from {self.root}")


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """Sorted .py files under the stdlib (tests, site-packages and caches excluded)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"root must be a directory, got {str(root)!r}")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # prune: never descend into them
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relpath: str, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of sha256(path) as a number in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") / 2**64
    return h < val_fraction


def load_corpus(max_bytes: int = 4_000_000, val_fraction: float = 0.1,
                root: str | Path | None = None) -> Corpus:
    """Read stdlib sources until max_bytes (train + validation) and split them by file hash."""
    check_positive_int("max_bytes", max_bytes)
    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train, val, train_files, val_files = [], [], [], []
    total = 0
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        size = path.stat().st_size
        if total + size > max_bytes and total:
            continue  # skip a file that overflows the cap; smaller later ones may fit
        data = path.read_bytes()[:max_bytes]
        total += len(data)
        if is_validation(rel, val_fraction):
            val.append(data)
            val_files.append(rel)
        else:
            train.append(data)
            train_files.append(rel)
    if not train or not val:
        raise ValueError(f"max_bytes = {max_bytes} is too small to fill both splits")
    as_array = lambda chunks: np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    return Corpus(as_array(train), as_array(val), train_files, val_files, str(root))


def sample_batch(data: np.ndarray, batch: int, seq_len: int, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
    """Random windows: x (B, L) and y = x shifted by one (B, L), int64, on device."""
    check_positive_int("batch", batch)
    check_positive_int("seq_len", seq_len)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError("data must be a 1-D uint8 numpy array (a split of a Corpus)")
    if len(data) < seq_len + 2:
        raise ValueError(f"seq_len must be < len(data) - 1 = {len(data) - 1}, got {seq_len}")
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None]  # (B, L + 1)
    window = torch.from_numpy(data)[idx].long()
    return window[:, :-1].to(device), window[:, 1:].to(device)


def encode(text: str) -> torch.Tensor:
    """str -> (L,) int64 byte ids (UTF-8)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(tokens) -> str:
    """Byte ids -> str; invalid UTF-8 shows as the replacement character."""
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

"""mambabook.bench: the one benchmark harness, for widgets, chapters and suites alike.

Sweeps providers x sizes on the current device (CUDA when present, else CPU): median time
(triton.testing.do_bench on GPU, torch.utils.benchmark on CPU), peak memory, an
out-of-memory point recorded as "oom" while the sweep goes on. Results are records saved
to JSON with provenance. `python -m mambabook.bench --suite NAME` runs a named suite from
`mambabook.suites` and writes benchmarks/results/<device>/<NAME>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import math
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("MAMBABOOK_RESULTS", REPO_ROOT / "benchmarks" / "results"))
GPU_REFERENCE = "nvidia-h200"  # the device whose recorded runs the website shows


# ----------------------------------------------------------------------------- devices
def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_slug(device: torch.device | str | None = None) -> str:
    """Folder name under benchmarks/results: 'nvidia-h200', or 'cpu'."""
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cuda":
        return "cpu"
    name = device_name(device).lower()
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=5,
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device | str | None = None) -> dict:
    """Where and when a measurement was made: device, versions, date, git commit."""
    device = torch.device(device) if device is not None else default_device()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # on a machine without the repository's .git (a copied tree), the caller passes it
        "commit": os.environ.get("MAMBABOOK_COMMIT") or _git_commit(),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


@contextlib.contextmanager
def one_cpu_thread(device: torch.device | str | None = None):
    """On a CPU, run the block with one torch thread (restored after); elsewhere do nothing.

    Benchmarks of many small ops time steadier with one thread: on a shared 2-core machine a
    second OpenMP thread mostly adds waiting, and an op can take 10-50x longer.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe(info: dict | None = None) -> str:
    """Two lines from a provenance dict (default: this device now), for chapter outputs:
    device and versions, then date and commit (each line fits a 100-character page)."""
    info = info if info is not None else provenance()
    parts = [info["device"], f"torch {info['torch']}"]
    if info.get("triton"):
        parts.append(f"triton {info['triton']}")
    if info.get("device_type") == "cpu":
        parts.append(f"{info.get('cpu_threads')} thread(s)")
    when = [info["date"][:16].replace("T", " ") + " UTC", f"commit {info.get('commit') or 'unknown'}"]
    return " | ".join(parts) + "\n" + " | ".join(when)


def synchronize(device: torch.device | str | None = None) -> None:
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing
def time_fn(
    fn: Callable[[], object],
    device: torch.device | str | None = None,
    *,
    min_run_time: float = 0.2,
    warmup_ms: float = 25,
    rep_ms: float = 100,
) -> float:
    """Median time of fn() in milliseconds on `device`.

    GPU: triton.testing.do_bench (CUDA events, L2 flushed between runs). CPU:
    torch.utils.benchmark.Timer.blocked_autorange for at least min_run_time seconds.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    from torch.utils import benchmark

    fn()  # warm-up: first-call allocations and lazy initialisation stay out of the numbers
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)


def time_calls(fn: Callable[[], object], device: torch.device | str | None = None,
               calls: int = 3, *, min_run_time: float = 0.2) -> float:
    """Median milliseconds of `calls` calls of fn() on a GPU, each between CUDA events, no
    warm-up (the caller has run fn once): for calls of a second or more, where time_fn's
    eight or more would cost minutes. On a CPU, time_fn."""
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cuda":
        return time_fn(fn, device, min_run_time=min_run_time)
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(statistics.median(times))


class _LiveBytes(TorchDispatchMode):
    """Counts bytes of tensor storage allocated by ops inside the mode and still alive."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._seen:
            self._seen.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t)
        return out


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak bytes allocated while fn() runs, above what was allocated before it.

    CUDA: the caching allocator's peak statistic. CPU: every tensor storage created by a
    torch op inside fn is counted while it is alive (a dispatch-mode tracker), so the
    number is the same kind of quantity on both devices: tensor bytes, not process RSS.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    tracker = _LiveBytes()
    with tracker:
        out = fn()
    del out
    return int(tracker.peak)


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, (RuntimeError, MemoryError)) and "out of memory" in str(err).lower()


# ----------------------------------------------------------------------------- sweeps
@dataclass
class Record:
    """One measurement: a provider at one size."""

    suite: str  # suite name, e.g. "attention_scaling"
    provider: str  # what ran, e.g. "sdpa" or "triton"
    size: dict  # the swept parameters, e.g. {"L": 4096, "B": 8}
    ms: float | None = None  # median milliseconds per call (None when not measured)
    peak_bytes: int | None = None  # peak memory above the inputs, bytes
    status: str = "ok"  # "ok", "oom", "skipped" (after an earlier oom) or "error"
    extra: dict = field(default_factory=dict)  # anything else (throughput, error text, ...)


def sweep(
    suite: str,
    providers: dict[str, Callable[..., Callable[[], object]]],
    sizes: Iterable[dict],
    *,
    device: torch.device | str | None = None,
    measure_memory: bool = True,
    min_run_time: float = 0.2,
    progress: bool = False,
) -> list[Record]:
    """Time every provider at every size.

    providers: name -> make(**size) returning a zero-argument callable (inputs allocated
    by make, outside the timing). A provider that runs out of memory gets an "oom" record
    and "skipped" records at the sizes after it; the others go on.
    """
    device = torch.device(device) if device is not None else default_device()
    sizes = list(sizes)
    records: list[Record] = []
    done = set()
    total = len(sizes) * len(providers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=suite, leave=False)
    for size in sizes:
        for name, make in providers.items():
            if bar is not None:
                bar.update(1)
            if name in done:
                records.append(Record(suite, name, dict(size), status="skipped"))
                continue
            try:
                fn = make(**size)
                ms = time_fn(fn, device, min_run_time=min_run_time)
                mem = peak_memory(fn, device) if measure_memory else None
                records.append(Record(suite, name, dict(size), ms, mem))
            except Exception as err:  # noqa: BLE001 - every failure becomes a record
                if not is_oom(err):
                    raise
                records.append(Record(suite, name, dict(size), status="oom"))
                done.add(name)
            finally:
                fn = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if bar is not None:
        bar.close()
    return records


# ----------------------------------------------------------------------------- results I/O
def results_path(suite: str, slug: str | None = None) -> Path:
    return RESULTS_DIR / (slug or device_slug()) / f"{suite}.json"


def save(
    records: Sequence[Record], suite: str, *, path: Path | str | None = None,
    command: str | None = None, notes: str | None = None,
) -> Path:
    """Write records with provenance to benchmarks/results/<device>/<suite>.json."""
    path = Path(path) if path is not None else results_path(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "suite": suite,
        "provenance": provenance(),
        "command": command or f"python -m mambabook.bench --suite {suite}",
        "notes": notes,
        "records": [asdict(r) for r in records],
    }
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def load(suite: str, slug: str = GPU_REFERENCE) -> dict | None:
    """A recorded run (payload with 'provenance' and 'records'), or None if absent."""
    path = results_path(suite, slug)
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    payload["records"] = [Record(**r) for r in payload["records"]]
    return payload


def select(records: Iterable[Record], provider: str, x: str, status: str = "ok"):
    """(xs, ms) of one provider's ok records, sorted by size parameter x."""
    pts = sorted((r.size[x], r.ms) for r in records if r.provider == provider and r.status == status)
    return [p[0] for p in pts], [p[1] for p in pts]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent k in y ~ x^k."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx else float("nan")


def summary_table(records: Iterable[Record], x: str) -> str:
    """A plain-text table: one row per size, one column per provider (ms or status)."""
    records = list(records)
    providers = list(dict.fromkeys(r.provider for r in records))
    xs = sorted({r.size[x] for r in records})
    cell = {(r.provider, r.size[x]): r for r in records}
    lines = [f"{x:>10} " + " ".join(f"{p:>16}" for p in providers)]
    for v in xs:
        row = []
        for p in providers:
            r = cell.get((p, v))
            row.append("" if r is None else (f"{r.ms:.4g} ms" if r.status == "ok" else r.status))
        lines.append(f"{v:>10} " + " ".join(f"{c:>16}" for c in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- suites
SUITES: dict[str, Callable[..., list[Record]]] = {}


def suite(name: str):
    """Register fn(quick: bool, device) -> list[Record] as a named suite."""

    def wrap(fn):
        SUITES[name] = fn
        return fn

    return wrap


def discover_suites() -> dict[str, Callable[..., list[Record]]]:
    """Import every module of mambabook.suites so that its @suite functions register."""
    import mambabook.suites as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    # under `python -m mambabook.bench` this module is __main__: use the package's registry
    return importlib.import_module("mambabook.bench").SUITES


def run_suite(name: str, *, quick: bool = False, save_to: Path | str | None = None,
              write: bool = True) -> tuple[list[Record], Path | None]:
    suites = discover_suites()
    if name not in suites:
        raise ValueError(f"suite must be one of {sorted(suites)}, got {name!r}")
    records = suites[name](quick=quick, device=default_device())
    cmd = "python -m mambabook.bench --suite " + name + (" --quick" if quick else "")
    path = save(records, name, path=save_to, command=cmd) if write else None
    return records, path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambabook.bench", description=__doc__)
    parser.add_argument("--suite", action="append", help="suite name (repeatable), or 'all'")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU-friendly)")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<device>)")
    args = parser.parse_args(argv)
    suites = discover_suites()
    if args.list or not args.suite:
        print("suites:", ", ".join(sorted(suites)))
        return 0
    names = sorted(suites) if args.suite == ["all"] else args.suite
    for name in names:
        out = Path(args.out) / f"{name}.json" if args.out else None
        records, path = run_suite(name, quick=args.quick, save_to=out)
        x = next(iter(records[0].size)) if records and records[0].size else None
        print(f"== {name} -> {path}")
        if x:
            print(summary_table(records, x))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

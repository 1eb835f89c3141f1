"""Condense one Nsight Compute profile of a selective-scan kernel into JSON: a few metrics
from ``ncu -i REP --page details``, and from ``ncu -i REP --page source --print-source sass
--csv`` the warp-stall reasons (share of all samples), the instruction mix per (step, state)
of the B=8, D=1536, L=4096, N=16 problem (warp instructions x 32 / B D L N), which kind
of load (global LDG, spilled LDL, shared LDS) the long-scoreboard samples wait for, and
the instructions that wait longest, each with the load it waits on.

    python3 benchmarks/experiments/ncu_summary.py DETAILS.txt SASS.csv [--work B*D*L*N]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import re

METRICS = {  # details page name -> key
    "Duration": "duration",
    "SM Frequency": "sm_frequency_ghz",
    "Issue Slots Busy": "issue_slots_busy_pct",
    "Executed Ipc Active": "ipc_active",
    "Warp Cycles Per Issued Instruction": "warp_cycles_per_issued_instruction",
    "Registers Per Thread": "registers_per_thread",
    "Block Size": "block_size",
    "Grid Size": "grid_size",
    "# SMs": "sms",
    "Theoretical Active Warps per SM": "theoretical_warps_per_sm",
    "Achieved Active Warps Per SM": "achieved_warps_per_sm",
    "Local Memory Spilling Requests": "local_spill_requests",
    "DRAM Throughput": "dram_throughput_pct",
    "L2 Cache Throughput": "l2_throughput_pct",
    "L1/TEX Hit Rate": "l1_hit_rate_pct",
}


def details(path: str) -> dict:
    out = {}
    for line in open(path):
        m = re.match(r"\s+(.+?)\s{2,}(?:(\S+)\s+)?([\d,.]+)\s*$", line)
        if m and m.group(1) in METRICS and METRICS[m.group(1)] not in out:
            value = float(m.group(3).replace(",", ""))
            key = METRICS[m.group(1)]
            if key == "duration":
                key, value = "duration_us", value * (1000.0 if m.group(2) == "ms" else 1.0)
            out[key] = value
    return out


def _operands(words: list[str]) -> tuple[str, list[str]]:
    """(opcode, operands) of one SASS instruction split into words (a leading @P predicate
    skipped)."""
    if words and words[0].startswith("@"):
        words = words[1:]
    return (words[0] if words else ""), " ".join(words[1:]).split(",")


def _registers(text: str) -> set[int]:
    return {int(r) for r in re.findall(r"\bR(\d+)\b", text)}


def _producer(code: list[list[str]], k: int) -> tuple[str, int | None]:
    """The load whose result instruction k waits for, and its index: scanning back in
    address order (no branches followed, so approximate), the nearest LDG/LDL/LDS writing
    one of k's source registers (a 64- or 128-bit load writes 2 or 4 consecutive registers)."""
    op, ops = _operands(code[k])
    stores = op.startswith(("ST", "RED", "ATOM"))
    wanted = set().union(*(_registers(o) for o in (ops if stores else ops[1:])))
    for j in range(k - 1, max(k - 400, -1), -1):
        op2, ops2 = _operands(code[j])
        if not op2.startswith(("LDG", "LDL", "LDS")):
            continue
        dest = sorted(_registers(ops2[0]))
        width = 4 if ".128" in op2 else 2 if ".64" in op2 else 1
        if dest and wanted & set(range(dest[0], dest[0] + width)):
            return op2.split(".")[0] + (f".{32 * width}" if width > 1 else ""), j
    return "unknown", None


def source(path: str, work: int) -> dict:
    rows = list(csv.reader(open(path)))
    head = next(r for r in rows if "Source" in r and "Address" in r)
    ix = {h: i for i, h in enumerate(head)}
    body = [r for r in rows[rows.index(head) + 1:] if len(r) >= len(head)]
    stalls = [h for h in head if h.startswith("stall_") and "Not Issued" not in h]
    executed, samples, waits = collections.Counter(), collections.Counter(), collections.Counter()
    pairs = collections.Counter()  # (waiting instruction, load) -> long-scoreboard samples
    total_exec = total_samples = 0
    code = [r[ix["Source"]].split() for r in body]
    for k, r in enumerate(body):
        words = code[k]
        if not words:
            continue
        long_sb = int(r[ix["stall_long_sb"]] or 0) if "stall_long_sb" in ix else 0
        if long_sb:
            kind, j = _producer(code, k)
            waits[kind] += long_sb
            pairs[(k, j)] += long_sb
        op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
        n = int(r[ix["Instructions Executed"]] or 0)
        executed[op] += n
        total_exec += n
        for h in stalls:
            samples[h[len("stall_"):]] += int(r[ix[h]] or 0)
        total_samples += int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
    per = 32.0 / work  # thread instructions per (step, state)
    return {
        "warp_instructions": total_exec,
        "instructions_per_step_state": round(total_exec * per, 2),
        "mix_per_step_state": {op: round(n * per, 2) for op, n in executed.most_common(16)},
        "stall_share_pct": {k: round(100.0 * v / total_samples, 1)
                            for k, v in samples.most_common(10) if v},
        # long-scoreboard samples by the kind of load waited for (see _producer)
        "long_sb_by_load_pct": {k: round(100.0 * v / max(sum(waits.values()), 1), 1)
                                for k, v in waits.most_common()},
        # the largest of those waits: which instruction waited, on which load, how far apart
        # (instructions in address order) and how often each ran
        "long_sb_top_waits": [
            {"pct": round(100.0 * v / max(sum(waits.values()), 1), 1),
             "waiting": f"[{k}] " + " ".join(code[k]),
             "executed": int(body[k][ix["Instructions Executed"]] or 0),
             "load": None if j is None else f"[{j}] " + " ".join(code[j]),
             "distance": None if j is None else k - j}
            for (k, j), v in pairs.most_common(6)],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("details")
    ap.add_argument("sass_csv")
    ap.add_argument("--work", type=int, default=8 * 1536 * 4096 * 16, help="B D L N")
    args = ap.parse_args()
    print(json.dumps({**details(args.details), **source(args.sass_csv, args.work)}, indent=1))


if __name__ == "__main__":
    main()

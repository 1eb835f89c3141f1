# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""What limits the states forward (issue 5, session 14): copies of the kernel module, each
with one piece of the loop taken out or changed, timed side by side with the library's at
B=8, D=1536, N=16, L=4096, bf16 (time-varying B and C, D, z, delta_bias, softplus), in two
interleaved rounds, each checked against the loop forward.

The ablations give wrong answers on purpose (their err_out says how wrong): they measure
what the piece costs, not a kernel to use.
- widen: no bfloat16 widening of B and C (each int32 pair used as one float32 twice)
- exp2: no exp2 in the recurrence (a = delta A log2 e + 1: one FFMA instead of FMUL + MUFU)
- widen+exp2: both
- gather: no shuffles for the chunk's delta and delta u (each row uses its own K steps,
  scaled per step so that no two exp2 are the same)
- sums: no shuffles in the reduce-scatter of y (a row adds half its partner's half locally)
- hot_inputs: u, delta, z of chunk 0 every chunk (cache-hot: no HBM latency)
- hot_bc: B and C of chunk 0 every chunk
And changes that keep the answer right:
- smem_gather: the gather as reshape + broadcast, which Triton lowers through shared memory
  (stmatrix, ld.shared, bar.sync) instead of shuffles
- remap: batch = linear program id % batch size (an SM's programs from fewer batches)
- fma: the state update as fma(a, h, delta u B) (session 15): LLVM had fused delta u B and
  left a h as a multiply on the loop-carried chain (two dependent instructions a step)
- zearly: z for chunk c's output loaded in iteration c instead of c + 1 (session 15: ncu's
  longest wait was the silu gate's z load, 231 instructions after it was issued)
- dearly: chunk c + 2's raw delta loaded in iteration c (one iteration earlier)
Probe suffixes: "s" gives every batch batch 0's B and C (stride 0: all programs read the
same B, C); "bc" widens B and C to float32 before the call (outside the timing).

    python3 benchmarks/experiments/states_ablations.py --out /tmp/states_ablations.json \
        [--probes base:4x16q2,widen:4x16q2,...] [--warm PROBE]

(--warm PROBE compiles one probe and exits: run one per probe in parallel first.) Run with
this folder on PYTHONPATH. Launch names as in states_forward.py (NLxT[rCAP][qPIPE][ePOLY][p][u]);
session 14's edits act on the launch without u (its default, "base:4x16q2") and with it;
the library's launch since is "base:4x16q2u", session 15's probes ran on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from forward_layouts import max_rel_err  # this folder's sibling scripts
from lanes_forward import ARGS, recorder
from lanes_variants import load_variant
from states_forward import parse

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.suites.selective_scan import make_scan_inputs

_STATES = "def _selective_scan_fwd_states_kernel("

# (old, new, whole module or only from the states kernel on)
EDITS = {
    "widen": [("""            out = out + _unpack_bf16(cols[q])""",
               """            w = cols[q].to(tl.float32, bitcast=True)  # ABLATION: no widening
            out = out + (w, w)""", False)],
    "exp2": [("""                        a_i = _ex2_fast(dts[r * V + v] * A2[s], ASM)""",
              """                        a_i = dts[r * V + v] * A2[s] + 1.0  # ABLATION: no exp2""",
              True)],
    "gather": [("""        dt = _shfl_seg(dt_c[i % K], i // K, NL, ASM)
        dts = dts + (dt,)
        if VU:
            dtus = dtus + (dt * uc[i],)
        else:
            dtus = dtus + (_shfl_seg(dtu_c[i % K], i // K, NL, ASM),)""",
                """        dt = dt_c[i % K] * (1.0 + 0.02 * i)  # ABLATION: no gather
        dts = dts + (dt,)
        if VU:
            dtus = dtus + (dt * uc[i],)
        else:
            dtus = dtus + (dtu_c[i % K] * (1.0 + 0.01 * i),)""", False)],
    "sums": [("""            nxt = nxt + (tl.where(keep_hi, hi, lo)
                             + _shfl_xor(tl.where(keep_hi, lo, hi), NL >> (j + 1), ASM),)""",
              """            nxt = nxt + (tl.where(keep_hi, hi, lo)  # ABLATION: no shuffle
                             + 0.5 * tl.where(keep_hi, lo, hi),)""", False)],
    "hot_inputs": [("""            tkn = t_nx + lrow * K + offs_k
            mkn = m_col & (tkn < L)
            if VU:""", """            tkn = lrow * K + offs_k + (t_nx // (4 * L)) * T  # ABLATION: chunk 0
            mkn = m_col & (tkn < L)
            if VU:""", True),
                   ("""            tko = tl.maximum(t0 - T, 0) + lrow * K + offs_k""",
                    """            tko = lrow * K + offs_k + (t0 // (4 * L)) * T""", True)],
    "hot_bc": [("""                    if s + 1 < S:
                        B_p = _states_raw(Bs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                        C_p = _states_raw(Cs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                    else:
                        B_p = _states_raw(Bs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
                        C_p = _states_raw(Cs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)""",
                """                    t_h = (t0 // (4 * L)) * T  # ABLATION: chunk 0 (t_h = 0)
                    if s + 1 < S:
                        B_p = _states_raw(Bs[s + 1], t_h, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                        C_p = _states_raw(Cs[s + 1], t_h, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                    else:
                        B_p = _states_raw(Bs[0], t_h, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
                        C_p = _states_raw(Cs[0], t_h, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)""",
                True)],
    "smem_gather": [("""    dts = ()
    dtus = ()
    for i in tl.static_range(T):
        dt = _shfl_seg(dt_c[i % K], i // K, NL, ASM)
        dts = dts + (dt,)
        if VU:
            dtus = dtus + (dt * uc[i],)
        else:
            dtus = dtus + (_shfl_seg(dtu_c[i % K], i // K, NL, ASM),)
    return dts, dtus""",
                     """    CPW: tl.constexpr = 32 // NL  # row g NL + l gets channel g's T steps
    dtu_k = dt_k * u.to(tl.float32)
    dt_all = tl.broadcast_to(tl.reshape(dt_k, (CPW, 1, T)), (CPW, NL, T)).reshape(32, T)
    dtu_all = tl.broadcast_to(tl.reshape(dtu_k, (CPW, 1, T)), (CPW, NL, T)).reshape(32, T)
    return _columns(dt_all, T), _columns(dtu_all, T)""", False)],
    "remap": [("""    pid_gd = tl.program_id(0)
    nblk""", """    lin = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
    pid_gd = lin // tl.num_programs(1)  # REMAP: batch = linear id % batch size
    nblk""", True), ("""    pid_b = tl.program_id(1).to(tl.int64)""",
                     """    pid_b = (lin % tl.num_programs(1)).to(tl.int64)""", True)],
}
EDITS["fma"] = [("""                    h = a_i * h + dtus[r * V + v] * b_i""",
                 """                    h = tl.fma(a_i, h, dtus[r * V + v] * b_i)  # FMA: a h fused""",
                 True)]
EDITS["zearly"] = [
    ("""        ys_w = _zero_columns(T)  # the chunk before's partial sums, waiting for its output""",
     """        ys_w = _zero_columns(T)  # the chunk before's partial sums, waiting for its output
        z_h = u_c  # ZEARLY: chunk c's z, loaded in iteration c for chunk c's output in c + 1
        if HAS_Z:
            z_h = _load_even(z_row + tk, mk, EVEN)""", True),
    ("""            if HAS_Z:
                z_w = _load_even(z_row + tko, mko, EVEN)""",
     """            if HAS_Z:  # ZEARLY: loaded an iteration earlier
                z_w = z_h
                z_h = _load_even(z_row + tk, mk, EVEN)""", True)]
EDITS["dearly"] = [
    ("""        ys_w = _zero_columns(T)  # the chunk before's partial sums, waiting for its output""",
     """        ys_w = _zero_columns(T)  # the chunk before's partial sums, waiting for its output
        t_1 = T  # DEARLY: chunk 1's raw delta now, chunk c + 2's in iteration c
        if EVEN:
            t_1 = tl.minimum(t_1, L - T)
        tk1 = t_1 + lrow * K + offs_k
        raw_h = _load_even(dt_row + tk1, m_col & (tk1 < L), EVEN)""", True),
    ("""            raw_n = _load_even(dt_row + tkn, mkn, EVEN)""",
     """            t_n2 = t0 + 2 * T  # DEARLY: chunk c + 1's raw delta came an iteration ago
            if EVEN:
                t_n2 = tl.minimum(t_n2, L - T)
            tk2 = t_n2 + lrow * K + offs_k
            raw_n = raw_h
            raw_h = _load_even(dt_row + tk2, m_col & (tk2 < L), EVEN)""", True)]
# both insert after the same line before the loop: the combination joins the two insertions
EDITS["zearly+dearly"] = [EDITS["zearly"][0], EDITS["zearly"][1], EDITS["dearly"][1]]
EDITS["zearly+dearly"][0] = (EDITS["zearly"][0][0], EDITS["zearly"][0][1]
                             + EDITS["dearly"][0][1][len(EDITS["dearly"][0][0]):], True)
EDITS["widen+exp2"] = EDITS["widen"] + EDITS["exp2"]
EDITS["hot_inputs+gather"] = EDITS["hot_inputs"] + EDITS["gather"]


def variant_source(name: str) -> str:
    """The kernel module's source with the edits of one ablation (each must match once, in
    the states kernel where marked so, else anywhere)."""
    src = open(ss.__file__).read()
    for old, new, states_only in EDITS[name]:
        start = src.index(_STATES) if states_only else 0
        end = src.index("\n@triton.jit", start) if states_only else len(src)
        part = src[start:end]
        assert part.count(old) == 1, (name, old[:60])
        src = src[:start] + part.replace(old, new) + src[end:]
    return src


def main() -> None:
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.devnull)
    ap.add_argument("--probes", default="base:4x16q2,widen:4x16q2,exp2:4x16q2,"
                    "widen+exp2:4x16q2,gather:4x16q2,sums:4x16q2,hot_inputs:4x16q2,"
                    "hot_bc:4x16q2,smem_gather:4x16q2,remap:4x16q2,base:4x16q2s,base:4x16q2bc")
    ap.add_argument("--warm", default="", help="compile this one probe and exit")
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    probes = [args.warm] if args.warm else [p for p in args.probes.split(",") if p]
    tmp = tempfile.mkdtemp()
    mods = {"base": ss}
    for name in {p.split(":")[0] for p in probes} - {"base"}:
        path = os.path.join(tmp, f"ablation_{name.replace('+', '_')}.py")
        open(path, "w").write(variant_source(name))
        mods[name] = load_variant(name.replace("+", "_"), path)
    torch.manual_seed(0)
    x = make_scan_inputs(8, 1536, args.L, 16, torch.bfloat16, "cuda")
    plain = [x[k] for k in ARGS]
    shared = list(plain)  # "s": batch 0's B and C for every batch (stride 0)
    shared[3] = x["B"][:1].expand_as(x["B"])
    shared[4] = x["C"][:1].expand_as(x["C"])
    wide = list(plain)  # "bc": float32 B and C
    wide[3], wide[4] = x["B"].float(), x["C"].float()

    def call(probe):
        name, cfg = probe.split(":")
        inputs = plain
        if cfg.endswith("bc"):
            cfg, inputs = cfg[:-2], wide
        elif cfg.endswith("s"):
            cfg, inputs = cfg[:-1], shared
        mods[name].STATES_FIXED = parse(cfg)
        return inputs, lambda: mods[name]._scan_fwd(*inputs, True, False, method="states")

    if args.warm:
        call(args.warm)[1]()
        torch.cuda.synchronize()
        sys.exit(0)
    rows, record = recorder(args.out)
    refs = {}
    for rnd in range(args.rounds):
        for probe in probes:
            inputs, f = call(probe)
            if id(inputs) not in refs:
                refs[id(inputs)] = ss._scan_fwd(*inputs, True, False, method="loop")[:2]
            try:
                out, last, _ = f()
                ms = do_bench(f, warmup=25, rep=100)
            except Exception as err:  # noqa: BLE001 - a probe that fails is recorded
                record(probe=probe, error=repr(err)[:400])
                continue
            ref_out, ref_last = refs[id(inputs)]
            record(probe=probe, round=rnd, L=args.L, dtype="bf16", ms=ms,
                   err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))


if __name__ == "__main__":
    main()

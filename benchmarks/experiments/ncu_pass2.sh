#!/bin/bash
# Nsight Compute on the rows backward's PASS 2 at B=8, D=1536, N=16, L=4096 (fp32, bf16), on the
# device machine from the repository root; writes under $OUT (default /tmp/out):
#   $OUT/<dtype>_details.txt  the details page (what ncu_summary.py reads)
#   $OUT/<dtype>_details_all.txt  the same with every table (--print-details all: the memory
#                             tables by access kind, L1 and L2 hit rates per kind)
#   $OUT/<dtype>_sass.csv.gz  the SASS source page (per-instruction counters and stall samples)
#   $OUT/<dtype>_summary.json ncu_summary.py's digest (instruction mix, stalls, top waits)
# Session 9 collected the same sections (ncu_pass2_4k_split_bcl in
# results/nvidia-h200/backward_rows_sweep.json) without --print-details all, so the tables
# were not printed. Usage: [DTYPES="fp32 bf16"] [T=115] [MODULE=copy.py] [ROWS=WIDE=1,maxnreg=168] bash benchmarks/experiments/ncu_pass2.sh
# (MODULE: profile a copy of the kernel module, e.g. with rows_nostore.patch applied; ROWS:
# override keys of the dtype's BWD_ROWS launch, see profile_backward.py)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
P=$(mktemp -d); cp -r lib "$P/mambabook" && cp -r kernels "$P/mambabook/kernels"
export PYTHONPATH=$P:${PYTHONPATH:-} PYTHONUNBUFFERED=1
NCU=(ncu --clock-control none --kernel-name regex:bwd_rows --launch-skip 3 --launch-count 1
     --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy
     --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
     --section MemoryWorkloadAnalysis_Tables --section InstructionStats --import-source no)
for v in ${DTYPES:-fp32 bf16}; do
  flag=""; [ "$v" = bf16 ] && flag="--bf16"
  timeout "${T:-115}" "${NCU[@]}" -o "$OUT/$v" python3 benchmarks/experiments/profile_backward.py $flag ${MODULE:+--module "$MODULE"} ${ROWS:+--rows "$ROWS"} \
    2>&1 | grep -v Warn | tail -2
  ncu -i "$OUT/$v.ncu-rep" --page details > "$OUT/${v}_details.txt" 2>&1
  ncu -i "$OUT/$v.ncu-rep" --page details --print-details all > "$OUT/${v}_details_all.txt" 2>&1
  ncu -i "$OUT/$v.ncu-rep" --page source --print-source sass --csv > "$OUT/${v}_sass.csv" 2>&1
  python3 benchmarks/experiments/ncu_summary.py "$OUT/${v}_details.txt" "$OUT/${v}_sass.csv" \
    > "$OUT/${v}_summary.json" 2>&1
  head -c 1500 "$OUT/${v}_summary.json"; echo
  gzip -f "$OUT/${v}_sass.csv"
  rm -f "$OUT/$v.ncu-rep"
done

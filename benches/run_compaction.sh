#!/usr/bin/env bash
# Search latency during compaction: an IVF-PQ collection of POINTS GloVe-50 vectors (default
# 200k, 100k-row segments) with half of them overwritten, search-only traffic at 80% of the
# measured maximum; p50/p99 before, during and after one compaction, for each background
# budget: "THREADS:IO_MB" pairs (default 1:64 = one thread and 64 MiB/s, 2:0 = every core of
# this machine and no disk limit).
# Usage: benches/run_compaction.sh [POINTS] [BUDGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
points="${1:-200000}"
shift || true
budgets=("$@")
[ ${#budgets[@]} -gt 0 ] || budgets=(1:64 2:0)
source benches/glove_release.sh
out="benches/results/compaction_$(date -u +%Y%m%dT%H%M).jsonl"
for b in "${budgets[@]}"; do
  "$bin/soak-bench" --quiverd "$bin/quiverd" --data "$data" --points "$points" --compaction \
    --bg-threads "${b%%:*}" --io-mb "${b##*:}" | tee -a "$out"
done
echo "results: $out"

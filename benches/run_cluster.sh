#!/usr/bin/env bash
# Replication benchmark on loopback (release build): write throughput and latency of a single
# node and a 3-node cluster with the same clients and GloVe batches, failover time after
# kill -9 of the leader, and catch-up time of a wiped replica holding the GloVe collection.
# Usage: benches/run_cluster.sh [SECONDS] [CLIENTS] [KILLS]   (default 10 8 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-8}"; kills="${3:-5}"
source benches/glove_release.sh
out="benches/results/cluster_$(date -u +%Y%m%dT%H%M).jsonl"
"$bin/cluster-bench" --quiverd "$bin/quiverd" --data "$data" \
  --seconds "$secs" --clients "$clients" --batch 100 --kills "$kills" | tee "$out"

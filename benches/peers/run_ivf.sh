#!/usr/bin/env bash
# Reproduces the IVF comparison on GloVe-50 from a fresh checkout: installs the Python peers in
# a venv, builds Quiver's benches in release, runs Quiver (4-bit fast-scan and 8-bit IVF-PQ,
# in-process and over gRPC), FAISS (IVF-Flat, IVF-PQ + refine, IVF-PQ fast-scan + refine),
# Qdrant's engine (qdrant-edge, HNSW) and LanceDB (IVF_PQ) one after another in the same run:
# same data, same queries, same nlist, one search thread, one query per call. Writes
# benches/results/ivf_glove50.{jsonl,md,png}.
# Usage: benches/peers/run_ivf.sh [QUERIES] [NLIST]
set -euo pipefail
cd "$(dirname "$0")/../.."
nq="${1:-2000}"; nlist="${2:-1024}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import faiss, matplotlib, qdrant_edge, lancedb' 2>/dev/null ||
  "$venv/bin/pip" install -q faiss-cpu==1.15.1 matplotlib qdrant-edge-py==0.9.0 lancedb==0.40.0 >&2
data="$cache/glove50"
[ -s "$data/gt100.ivecs" ] || "$py" benches/make_glove50.py --out "$data"
cargo build --release --locked -p quiver-benches -p quiver-server --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out=benches/results/ivf_glove50
: > "$out.jsonl"
sweep="8:4,16:4,24:4,32:4,40:4,48:4,56:4,64:4,80:4,96:4,32:8,48:8,64:8"
targets="r0.9:4,r0.95:4,r0.98:4"
for bits in 4 8; do
  "$bin/ivf-bench" --data "$data" --queries "$nq" --nlist "$nlist" --pq-bits "$bits" --sweep "$sweep,$targets" | tee -a "$out.jsonl"
done
# The same index over gRPC: a real quiverd on a free loopback port, one client, one request at a
# time; once with the default configuration and once with idle polling (server.idle_poll_us).
grpc() { # LABEL [ENV=VALUE...]
  local label=$1; shift
  local dir log pid addr
  dir=$(mktemp -d /tmp/quiver-ivf.XXXXXX); log="$dir.out"
  env "$@" "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
  pid=$!
  for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
  addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
  "$bin/glove-bench" --addr "$addr" --data "$data" --queries "$nq" --ivf-nlist "$nlist" --pq-bits 4 \
    --label="$label" --sweep "$sweep,$targets" | grep '^{' | tee -a "$out.jsonl"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir" "$dir.log" "$log"
}
grpc ""
grpc "-idlepoll" QUIVER__SERVER__IDLE_POLL_US=200
OMP_WAIT_POLICY=PASSIVE "$py" benches/peers/faiss_ivf.py "$data" --queries "$nq" --nlist "$nlist" --sweep "$sweep" | tee -a "$out.jsonl"
"$py" benches/peers/qdrant_edge_hnsw.py "$data" --queries "$nq" --ef 16,24,32,48,64,96,128 | tee -a "$out.jsonl"
"$py" benches/peers/lancedb_ivf.py "$data" --queries "$nq" --nlist "$nlist" --pq-m 25 --sweep 16:4,32:4,48:4,64:4 | tee -a "$out.jsonl"
"$py" benches/peers/plot.py "$out.jsonl" "$out"

#!/usr/bin/env bash
# Reproduces the IVF comparison on GloVe-50 from a fresh checkout: installs the Python peers in
# a venv, builds Quiver's bench in release, runs Quiver and FAISS in the same run (same nlist,
# one thread, one query per call), writes benches/results/ivf_glove50.{md,png,jsonl}.
# Usage: benches/peers/run_ivf.sh [QUERIES] [NLIST]
set -euo pipefail
cd "$(dirname "$0")/../.."
nq="${1:-2000}"; nlist="${2:-1024}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import faiss, matplotlib' 2>/dev/null || "$venv/bin/pip" install -q faiss-cpu matplotlib >&2
data="$cache/glove50"
[ -s "$data/gt100.ivecs" ] || "$py" benches/make_glove50.py --out "$data"
cargo build --release --locked -p quiver-benches -p quiver-server --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out=benches/results/ivf_glove50
: > "$out.jsonl"
sweep="8:4,16:4,24:4,32:4,48:4,64:4,32:8,64:8"
"$bin/ivf-bench" --data "$data" --queries "$nq" --nlist "$nlist" --sweep "$sweep" | tee -a "$out.jsonl"
# The same index over gRPC: a real quiverd on a free loopback port, one client, one request at a time.
dir=$(mktemp -d /tmp/quiver-ivf.XXXXXX); log=$(mktemp)
"$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
pid=$!; trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.log" "$log"' EXIT
for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
"$bin/glove-bench" --addr "$addr" --data "$data" --queries "$nq" --ivf-nlist "$nlist" --sweep "$sweep" | grep '^{' | tee -a "$out.jsonl"
kill $pid; wait $pid 2>/dev/null || true
OMP_WAIT_POLICY=PASSIVE "$py" benches/peers/faiss_ivf.py "$data" --queries "$nq" --nlist "$nlist" --sweep "$sweep" | tee -a "$out.jsonl"
"$py" benches/peers/plot.py "$out.jsonl" "$out"

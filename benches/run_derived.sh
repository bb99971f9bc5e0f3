#!/usr/bin/env bash
# Quiver's defaults over gRPC on a large (derived) set, as a new user would run them: a fresh
# data directory, glove-bench --defaults (load, wait for merges and builds to settle, sweep
# target_recall, 1 and 16 clients), the server's memory (VmHWM, VmRSS, data directory), then a
# restart: open time and RSS before any search. Results go to stdout as JSON lines.
# Before measuring, the WARM queries after the measured 2,000 (default 1,000; 0 = none) are
# searched until the server's recall audit has a served curve in every indexed segment, as a
# server that has been serving would have; the measured queries are not among them.
#   bash benches/run_derived.sh DATA [METRIC]   (DATA from benches/make_derived.py --queries 3000)
set -euo pipefail
data="$1"; metric="${2:-cosine}"
bin="${CARGO_TARGET_DIR:-target}/release"
dir="$(mktemp -d)"; log="$dir.log"
trap 'rm -rf "$dir" "$log" "$dir".out*' EXIT
start() {
  "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 > "$dir.out$1" 2>> "$log" & pid=$!
  for _ in $(seq 1 2000); do grep -q listening "$dir.out$1" && break; sleep 0.01; done
  addr="http://$(sed -n 's/^quiverd listening on //p' "$dir.out$1")"
}
start 1
"$bin/glove-bench" --addr "$addr" --data "$data" --collection derived --queries 2000 --defaults \
  --warm-queries "${WARM:-1000}" --metric "$metric" --sweep r0.9:4,r0.95:4,r0.99:4 --clients 1,16 --rounds 3 | grep '^{'
hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status); rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
kill "$pid"; wait "$pid" || true
t0=$(date +%s.%N); start 2; t1=$(date +%s.%N); sleep 2
after=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
kill "$pid"; wait "$pid" || true
echo "{\"system\": \"quiverd\", \"event\": \"memory\", \"peak_rss_kb\": $hwm, \"serving_rss_kb\": $rss, \"data_dir_bytes\": $(du -sb "$dir" | cut -f1), \"open_seconds\": $(awk "BEGIN{print $t1 - $t0}"), \"rss_after_open_kb\": $after}"

#!/usr/bin/env bash
# Quiver's defaults over gRPC on a large (derived) set, as a new user would run them: a fresh
# data directory, glove-bench --defaults (load, wait for merges and builds to settle, sweep
# target_recall, 1 and 16 clients), the server's memory (VmHWM, VmRSS, data directory), then a
# restart: open time and RSS before any search. Results go to stdout as JSON lines.
# Before measuring, the WARM queries after the measured 2,000 (default 1,000; 0 = none) are
# searched until the server's recall audit has a served curve in every indexed segment, as a
# server that has been serving would have; the measured queries are not among them.
# With BUDGET_MB set (root, cgroup v1 or v2 memory controller), the data directory is then
# served once more from a memory cgroup of that many MB, smaller than the raw vectors, after
# the page cache is dropped: the searches read the vectors through the mapped files, and the
# kernel evicts their pages to stay in budget. Its queries are the measured ones, again.
#   bash benches/run_derived.sh DATA [METRIC]   (DATA from benches/make_derived.py --queries 3000)
set -euo pipefail
data="$1"; metric="${2:-cosine}"
bin="${CARGO_TARGET_DIR:-target}/release"
dir="$(mktemp -d)"; log="$dir.log"
trap 'rm -rf "$dir" "$log" "$dir".out*' EXIT
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start() {
  "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$mport" \
    > "$dir.out$1" 2>> "$log" & pid=$!
  for _ in $(seq 1 2000); do grep -q listening "$dir.out$1" && break; sleep 0.01; done
  addr="http://$(sed -n 's/^quiverd listening on //p' "$dir.out$1")"
}
start 1
"$bin/glove-bench" --addr "$addr" --data "$data" --collection derived --queries 2000 --defaults \
  --warm-queries "${WARM:-1000}" --metric "$metric" --sweep r0.9:4,r0.95:4,r0.99:4 --clients 1,16 --rounds 3 | grep '^{'
hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status); rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
anon=$(awk '/RssAnon/{print $2}' /proc/$pid/status)
# Where the anonymous memory goes (the gauges refresh every 10 s).
sleep 11
gauges=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^quiver_(heap|meta)_[a-z_]+_bytes / {
  printf ", \"%s\": %d", $1, $2 } /^quiver_collection_move_map_bytes/ { m += $2 } END { printf ", \"move_map_bytes\": %d", m }')
kill "$pid"; wait "$pid" || true
t0=$(date +%s.%N); start 2; t1=$(date +%s.%N); sleep 2
after=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
kill "$pid"; wait "$pid" || true
echo "{\"system\": \"quiverd\", \"event\": \"memory\", \"peak_rss_kb\": $hwm, \"serving_rss_kb\": $rss, \"serving_anon_kb\": $anon$gauges, \"data_dir_bytes\": $(du -sb "$dir" | cut -f1), \"open_seconds\": $(awk "BEGIN{print $t1 - $t0}"), \"rss_after_open_kb\": $after}"

[ -n "${BUDGET_MB:-}" ] || exit 0
# A memory cgroup of BUDGET_MB (v2 if mounted as such, else v1's memory controller).
cg=""; for root in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/memory; do
  if [ -f "$root/cgroup.controllers" ] && grep -qw memory "$root/cgroup.controllers"; then
    cg="$root/quiver-budget-$$"; mkdir "$cg"; echo $((BUDGET_MB << 20)) > "$cg/memory.max"
    limit="$cg/memory.max"; peak="$cg/memory.peak"; break
  elif [ -f "$root/memory.limit_in_bytes" ]; then
    cg="$root/quiver-budget-$$"; mkdir "$cg"; echo $((BUDGET_MB << 20)) > "$cg/memory.limit_in_bytes"
    limit="$cg/memory.limit_in_bytes"; peak="$cg/memory.max_usage_in_bytes"; break
  fi
done
[ -n "$cg" ] || { echo '{"event": "budget", "error": "no writable memory cgroup"}'; exit 0; }
trap 'rm -rf "$dir" "$log" "$dir".out*; rmdir "$cg" 2>/dev/null || true' EXIT
sync; echo 3 > /proc/sys/vm/drop_caches
# The server joins the cgroup before it opens anything (a shell that enters it, then execs).
procs="$cg/cgroup.procs"; [ -f "$procs" ] || procs="$cg/tasks"
sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$procs" "$bin/quiverd" --data-dir "$dir" --listen 127.0.0.1:0 \
  > "$dir.out3" 2>> "$log" &
pid=$!
for _ in $(seq 1 2000); do grep -q listening "$dir.out3" && break; sleep 0.01; done
addr="http://$(sed -n 's/^quiverd listening on //p' "$dir.out3")"
# With a cold page cache the open reads (and checksums) every file from disk: wait for it.
t0=$(date +%s.%N)
for _ in $(seq 1 1200); do "$bin/quiver" --addr "$addr" collection info derived >/dev/null 2>&1 && break; sleep 0.1; done
echo "{\"system\": \"quiverd\", \"event\": \"budget-open\", \"budget_mb\": $BUDGET_MB, \"cold_open_seconds\": $(awk "BEGIN{print $(date +%s.%N) - $t0}")}"
"$bin/glove-bench" --addr "$addr" --data "$data" --collection derived --queries 2000 --defaults --skip-load \
  --metric "$metric" --sweep r0.95:4 --clients 1,16 --rounds 3 | grep '^{' | sed 's/"system":"quiver-defaults/"budget_mb":'"$BUDGET_MB"',"system":"quiver-budget/'
rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status); anon=$(awk '/RssAnon/{print $2}' /proc/$pid/status)
file=$(awk '/RssFile/{print $2}' /proc/$pid/status)
alive=$(kill -0 "$pid" 2>/dev/null && echo true || echo false)
kill "$pid"; wait "$pid" || true
echo "{\"system\": \"quiverd\", \"event\": \"budget\", \"budget_mb\": $BUDGET_MB, \"cgroup_peak_bytes\": $(cat "$peak" 2>/dev/null || echo null), \"limit_bytes\": $(cat "$limit"), \"rss_kb\": $rss, \"rss_anon_kb\": $anon, \"rss_file_kb\": $file, \"alive_after\": $alive}"

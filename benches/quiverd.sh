# Sourced by bench scripts: starts a release `quiverd` from "$bin" on a free 127.0.0.1 port
# with a temporary data directory, stops it and removes the directory on exit, and defines
# `addr` and `q` (the `quiver` CLI against it). Needs `bin` set.
dir=$(mktemp -d /tmp/quiver-bench.XXXXXX); log="$dir.out"
"$bin/quiverd" --data-dir "$dir/data" --listen 127.0.0.1:0 >"$log" 2>"$dir.log" &
pid=$!; trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.out" "$dir.log"' EXIT
for _ in $(seq 1 200); do grep -q listening "$log" && break; sleep 0.05; done
addr="http://$(sed -n 's/^quiverd listening on //p' "$log")"
q() { "$bin/quiver" --addr "$addr" "$@"; }

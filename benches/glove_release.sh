# Sourced by the benchmark scripts (from the repository root): fetches GloVe-50 into the cache
# (`$QUIVER_BENCH_CACHE`, default ~/.cache/quiver) and builds the release binaries. Sets `py`
# (the cache's Python), `data` (the GloVe-50 directory) and `bin` (the release directory), and
# creates benches/results.
cache="${QUIVER_BENCH_CACHE:-$HOME/.cache/quiver}"
py=$(bash scripts/fetch-glove.sh "$cache")
data="$cache/glove50"
[ -s "$data/base.fvecs" ] || "$py" benches/make_glove50.py --out "$data"
cargo build --release --locked -p quiver-server -p quiver-benches --bins
bin="${CARGO_TARGET_DIR:-target}/release"
mkdir -p benches/results

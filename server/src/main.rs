//! `quiverd`: the server binary ([`quiver_server::cli`]).

/// jemalloc: glibc's per-thread arenas kept freed memory (RSS grew from 106 to 443 MB in a
/// 10-minute soak while the data stayed the same size); jemalloc returns it to the system.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    quiver_server::cli::main()
}

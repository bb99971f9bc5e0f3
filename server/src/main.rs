//! `quiverd`: the server binary ([`quiver_server::cli`]).

/// jemalloc: glibc's per-thread arenas kept freed memory (RSS grew from 106 to 443 MB in a
/// 10-minute soak while the data stayed the same size); jemalloc returns it to the system.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // Freed pages go back to the system after jemalloc's decay time even while the process
    // is idle (without background threads, purging happens only on allocator activity).
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("quiverd: jemalloc background threads unavailable: {e}");
    }
    quiver_server::cli::main()
}

//! `quiverd` built as a target of the end-to-end tests (the same entry point as the shipped
//! binary, with the same allocator), so `cargo test` builds what it runs.

/// The shipped binary's allocator (jemalloc), so memory tests measure what users run.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    quiver_server::cli::main()
}

//! The `quiver` CLI built as a target of the end-to-end tests (the same entry point as the
//! shipped binary), so `cargo test` builds what it runs.
fn main() -> std::process::ExitCode {
    quiver_client::cli::main()
}

//! `quiver`: the command-line client ([`quiver_client::cli`]).
fn main() -> std::process::ExitCode {
    quiver_client::cli::main()
}

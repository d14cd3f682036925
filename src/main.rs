//! The `orchestrator` binary: everything happens in the library.

fn main() -> std::process::ExitCode {
    orchestrator::cli::main()
}

//! The `pgcapi` binary: a thin entry point over [`pgcapi::cli`].

fn main() -> std::process::ExitCode {
    pgcapi::cli::main()
}

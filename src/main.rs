//! The `whittle` command: the library's engine behind a command line (clap, anyhow).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! The `whittle` command: the library's engine behind a command line (clap, anyhow).

mod cli;

/// Reuses freed tensor buffers instead of returning them to the kernel and faulting fresh pages
/// in for the next one, and does not let fragments of them pile up as a streamed model runs
/// block after block (glibc's malloc did both).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

fn main() -> std::process::ExitCode {
    whittle::cli::main()
}

//! gateway: an eBPF-accelerated TCP gateway configured with Istio's API.
fn main() -> std::process::ExitCode {
    gateway_user::cli::main()
}

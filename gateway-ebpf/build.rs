//! Rebuild the programs when the linker changes (a new bpf-linker can emit
//! different code for the same source).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

//! Builds the eBPF programs (gateway-ebpf, on the nightly toolchain, for
//! bpfel-unknown-none) into OUT_DIR, where the agent embeds them.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("failed to build the eBPF programs (`cargo xtask setup` installs what they need)")
}

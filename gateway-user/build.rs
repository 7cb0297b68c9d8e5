//! Builds the eBPF programs (gateway-ebpf, on the nightly toolchain, for
//! bpfel-unknown-none) into OUT_DIR, where the agent embeds them.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_FUZZING").is_some() {
        // The fuzz targets never load the programs; an empty object keeps
        // the embedding compiling.
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("gateway"), b"")
            .context("write the empty eBPF object")?;
        return Ok(());
    }
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

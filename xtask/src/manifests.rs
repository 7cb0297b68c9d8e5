//! `cargo xtask manifests`: the Kubernetes manifests with an image, and
//! their validation against a Kubernetes release's own schemas.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::util;

/// The schemas the manifests must validate against, strictly: the
/// validator's release carries the Kubernetes release of the same number.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
const KUBERNETES: &str = "1.37.0";
/// The image the DaemonSet names until rendered with another.
const PLACEHOLDER: &str = "image: gateway:dev";

/// What is applied to a cluster, in the order to apply it.
const DEPLOY: [&str; 4] = [
    "manifests/crds/istio-networking.yaml",
    "manifests/deploy/namespace.yaml",
    "manifests/deploy/rbac.yaml",
    "manifests/deploy/daemonset.yaml",
];
/// Validated too, not rendered.
const EXAMPLES: [&str; 1] = ["manifests/examples/kubernetes/tcp-echo.yaml"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway image the DaemonSet runs.
    #[arg(long, value_name = "REF")]
    image: String,
    /// Include the Istio CRDs, for a cluster without Istio (where Istio is
    /// installed, its own CRDs must stay).
    #[arg(long)]
    crds: bool,
}

/// Prints the deploy manifests as one stream, the DaemonSet running `image`.
pub fn render(args: &Args) -> anyhow::Result<()> {
    if args.image.trim().is_empty() || args.image.contains(char::is_whitespace) {
        bail!("--image must be an image reference, e.g. registry.example/gateway:0.1.0");
    }
    let mut out = Vec::new();
    for file in DEPLOY {
        if file.starts_with("manifests/crds/") && !args.crds {
            continue;
        }
        let path = util::root().join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        out.push(text.replace(PLACEHOLDER, &format!("image: {}", args.image)));
    }
    print!("{}", out.join("---\n"));
    Ok(())
}

/// Validates every manifest strictly against Kubernetes' schemas, with the
/// validator installed (pinned) in a virtualenv under target/.
pub fn validate() -> anyhow::Result<()> {
    let venv = util::venv("manifests-venv", VALIDATOR)?;
    let bin = venv.join("bin").join("kubernetes-validate");
    let files: Vec<PathBuf> = DEPLOY
        .iter()
        .chain(&EXAMPLES)
        .map(|f| util::root().join(f))
        .collect();
    util::run(
        Command::new(&bin)
            .args(["--strict", "--quiet", "-k", KUBERNETES])
            .args(&files),
    )
    .context("a manifest does not validate")?;
    eprintln!(
        "xtask: {} manifest files validate strictly against Kubernetes {KUBERNETES}",
        files.len()
    );
    Ok(())
}

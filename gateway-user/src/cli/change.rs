//! `gateway apply`, `gateway delete` and `gateway validate`: kubectl's
//! verbs for the gateway, with kubectl's output.
use std::path::{Path, PathBuf};

use anyhow::bail;

use super::run::{agent_identity, parse_label};
use crate::control::admin::{self, Op, Request};
use crate::istio::{self, Store};

#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// Files or directories of Istio YAML, as `kubectl -f` takes them; `-`
    /// reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Namespace for documents that name none; a document naming another
    /// one is refused, as kubectl does.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The running agent's admin socket.
    #[arg(long, value_name = "PATH", default_value = admin::DEFAULT_ADMIN)]
    pub admin: PathBuf,
    /// Check everything the agent would check, ports included, and change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Files or directories of Istio YAML; `-` reads standard input. Give
    /// every file the gateway would serve together: routes are checked
    /// against the endpoints and rules they name.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Namespace for documents that name none.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The gateway's labels, matched against each Gateway's selector.
    #[arg(
        long,
        value_name = "KEY=VALUE[,...]",
        value_delimiter = ',',
        default_value = "istio=ingressgateway",
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,
    /// The GatewayClass whose Gateway API Gateways this gateway serves.
    #[arg(long, value_name = "NAME", default_value = istio::DEFAULT_GATEWAY_CLASS)]
    pub gateway_class: String,
}

/// The files `-f` names, read: directories as kubectl reads them.
fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<admin::File>> {
    let mut out = Vec::new();
    let mut named = Vec::new();
    for p in paths {
        if p == Path::new("-") {
            let text = crate::control::files::read_capped(std::io::stdin())?;
            out.push(admin::File {
                name: "<stdin>".into(),
                text,
            });
        } else {
            named.push(p.clone());
        }
    }
    for f in crate::control::files::manifest_files(&named)? {
        let text = crate::control::files::read_manifest(&f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        out.push(admin::File {
            name: f.display().to_string(),
            text,
        });
    }
    Ok(out)
}

fn warn_all<W: std::fmt::Display>(warnings: &[W]) {
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

/// `gateway apply` and `gateway delete`.
pub fn change(op: Op, args: ChangeArgs) -> anyhow::Result<()> {
    let req = Request {
        op,
        namespace: args.namespace,
        dry_run: args.dry_run,
        files: read_files(&args.files)?,
    };
    let answer = admin::call(&args.admin, &req)?;
    if !answer.errors.is_empty() {
        let lines: Vec<String> = answer.errors.iter().map(ToString::to_string).collect();
        bail!("{}", lines.join("\n"));
    }
    warn_all(&answer.warnings);
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for line in &answer.changes {
        println!("{line}{suffix}");
    }
    for line in &answer.not_found {
        eprintln!("{line}");
    }
    Ok(())
}

/// `gateway validate`: the checks `gateway apply` makes, offline, as if
/// the files were applied to a gateway serving nothing else.
pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let mut batch = istio::Batch::default();
    let mut problems = Vec::new();
    let ns = istio::Namespace::from(args.namespace.as_deref());
    for f in read_files(&args.files)? {
        match istio::parse(&f.text, &f.name, ns) {
            Ok(b) => batch.extend(b),
            Err(istio::ConfigError::Invalid(mut p)) => problems.append(&mut p),
            Err(e) => return Err(e.into()),
        }
    }
    if !problems.is_empty() {
        bail!("{}", istio::ConfigError::Invalid(problems));
    }
    let applied =
        Store::new(agent_identity(&args.labels, &args.gateway_class)).apply(&batch.resources)?;
    let notes = &batch.notes;
    warn_all(notes);
    let warnings = &applied.snapshot.warnings;
    warn_all(warnings);
    println!(
        "{} valid: {} resource(s), {} warning(s)",
        args.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        batch.resources.len(),
        notes.len() + warnings.len()
    );
    for l in &applied.snapshot.listeners {
        let total: u64 = l
            .route
            .destinations
            .iter()
            .map(|d| u64::from(d.weight))
            .sum();
        let split: Vec<String> = l
            .route
            .destinations
            .iter()
            .map(|d| {
                format!(
                    "{} {}% ({} endpoint(s))",
                    d.cluster.name,
                    (u64::from(d.weight) * 100).checked_div(total).unwrap_or(0),
                    d.cluster.endpoints.len()
                )
            })
            .collect();
        let (gateway, route) = if l.route.kind == istio::Kind::TcpRoute {
            ("Gateway.gateway.networking.k8s.io", "TCPRoute")
        } else {
            ("Gateway", "VirtualService")
        };
        println!(
            "port {}: {gateway} {}, {route} {} -> {}",
            l.port,
            l.gateway,
            l.route.virtual_service,
            split.join(", ")
        );
    }
    for s in &applied.snapshot.status {
        println!("status: {s}");
    }
    Ok(())
}

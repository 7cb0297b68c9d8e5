//! Why the control plane refused something: typed, so each client renders
//! it its own way (the admin socket as a list of diagnostics, the log as
//! lines, a Kubernetes source as status per resource).
use std::{io, path::PathBuf};

use crate::istio::{ConfigError, Diagnostic};

/// A change (or the start-up config) was refused; nothing was switched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resources were refused (a file unreadable, a document invalid,
    /// a route unresolvable, a port that cannot be bound): every problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file the agent keeps could not be read back.
    #[error("{}", state_lines(path, problems))]
    State {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// The new overlay could not be saved, so it was not served either.
    #[error("cannot save the applied state to {}: {source}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn state_lines(path: &std::path::Path, problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// One diagnostic per problem: the configuration's own where it has
    /// them, otherwise the whole error as one message.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            Error::Config(ConfigError::Invalid(list)) => list.clone(),
            other => other
                .to_string()
                .lines()
                .map(|l| Diagnostic::new(None, "", l))
                .collect(),
        }
    }
}

/// The configuration given at start-up was refused: the agent exits with
/// [`EXIT_BAD_CONFIG`], so a supervisor can tell it from other failures.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadConfig(#[from] pub Error);

impl From<ConfigError> for BadConfig {
    fn from(e: ConfigError) -> Self {
        BadConfig(Error::Config(e))
    }
}

/// Exit status for configuration refused at start-up (BSD's `EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

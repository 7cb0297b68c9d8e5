//! The control plane: what is served and every change to it. Config comes
//! from sources (the `--config` files, the admin socket's `gateway apply`
//! and `gateway delete`, and with `--source kubernetes` the cluster's
//! resources, [`kube`]); each change goes through the [`Controller`], one
//! at a time, which resolves it with [`crate::istio`], binds its new ports,
//! saves the overlay under `--state-dir` and only then switches the
//! serving stack's routing table ([`crate::proxy`]).
pub mod admin;
mod controller;
mod error;
pub mod files;
pub mod kube;
pub mod state;
mod status;

pub use controller::{Controller, Outcome};
pub use error::{BadConfig, Error, EXIT_BAD_CONFIG};

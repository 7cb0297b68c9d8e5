//! The signals a serving gateway answers: SIGUSR1 prints the counters,
//! SIGTERM and SIGINT stop it. Installed before anything says the gateway is
//! up (SIGUSR1's default action is to terminate the process), and a handler
//! that cannot be installed is an error, not a gateway that can never stop.
use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Signals {
    usr1: Signal,
    term: Signal,
    int: Signal,
}

/// What a signal asks for.
pub enum Asked {
    Report,
    Stop,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            usr1: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// The next signal's request.
    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.usr1.recv() => Asked::Report,
            _ = self.term.recv() => Asked::Stop,
            _ = self.int.recv() => Asked::Stop,
        }
    }
}

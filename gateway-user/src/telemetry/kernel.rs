//! What the verdict program counts, kernel-wide, as the agent reports it.
use serde::Serialize;

macro_rules! totals {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Kernel-wide totals since the programs were loaded (or since a
        /// base: see [`KernelTotals::since`]).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct KernelTotals {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl KernelTotals {
            /// Each total: its name, what it counts, its value.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc),*), self.$name),)*]
            }

            /// What was counted after `base`.
            pub fn since(&self, base: &KernelTotals) -> KernelTotals {
                KernelTotals {
                    $($name: self.$name.saturating_sub(base.$name),)*
                }
            }
        }
    };
}

totals! {
    /// Payload bytes redirected to the peer socket.
    redirected_bytes,
    /// Payload bytes passed to the agent (flow control, overlaps).
    passed_bytes,
    /// Skbs without payload, dropped.
    empty_dropped,
    /// Skbs of a socket the maps do not know, passed.
    unknown_socket,
    /// Redirects the kernel refused.
    redirect_failed,
    /// Bytes the verdict saw twice (retransmitted segments that straddled
    /// what TCP already had), discarded by the agent.
    overlap_bytes,
    /// Skbs whose sequence numbers the verdict could not read.
    seq_unknown,
    /// Runs of the verdict program, counted while this process holds the
    /// kernel's run-time statistics on (`--bpf-stats`); else 0.
    verdict_runs,
    /// The time those runs took.
    verdict_run_ns,
}

#[cfg(test)]
mod tests {
    use super::KernelTotals;

    #[test]
    fn since_subtracts_each_counter_and_never_goes_below_zero() {
        let base = KernelTotals {
            redirected_bytes: 10,
            verdict_runs: 5,
            ..KernelTotals::default()
        };
        let now = KernelTotals {
            redirected_bytes: 25,
            passed_bytes: 3,
            verdict_runs: 4,
            ..KernelTotals::default()
        };
        let d = now.since(&base);
        assert_eq!(
            (d.redirected_bytes, d.passed_bytes, d.verdict_runs),
            (15, 3, 0)
        );
    }
}

//! Types and names shared by the gateway's eBPF programs and its agent.
//!
//! Every map value here is written by exactly one side: the agent owns
//! [`PeerCtl`], the verdict program owns [`FlowStats`]. Neither side ever
//! rewrites a value the other writes (see the data path design note).
#![no_std]

/// Sockhash with no programs attached: the redirect targets.
pub const MAP_TARGETS: &str = "TARGETS";
/// Sockhash carrying the stream verdict: the sockets whose received bytes are
/// spliced.
pub const MAP_SOCKS: &str = "SOCKS";
/// Agent-owned control record per socket cookie.
pub const MAP_PEERS: &str = "PEERS";
/// Verdict-owned counters per socket cookie.
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU totals since load, indexed by the `TOTAL_*` constants.
pub const MAP_TOTALS: &str = "TOTALS";
/// The sk_skb stream verdict program.
pub const PROG_VERDICT: &str = "gateway_verdict";

/// Default capacity of the socket maps (two sockets per connection). The
/// agent overrides it at load time (`--max-connections`).
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;

/// Bytes redirected to the peer socket.
pub const TOTAL_REDIRECTED: u32 = 0;
/// Bytes passed to the source socket's own queue for the agent to move.
pub const TOTAL_PASSED: u32 = 1;
/// Zero-length skbs (a bare FIN) dropped.
pub const TOTAL_EMPTY_DROPPED: u32 = 2;
/// Skbs seen on a socket with no control record (kept, not lost: passed).
pub const TOTAL_UNKNOWN_SOCKET: u32 = 3;
/// Redirects the kernel refused (the peer was missing from `TARGETS`).
pub const TOTAL_REDIRECT_FAILED: u32 = 4;
/// Bytes the verdict saw a second time: the head of an skb that overlaps
/// bytes it already handed on (passed for the agent to discard).
pub const TOTAL_OVERLAP: u32 = 5;
/// Skbs whose TCP sequence numbers the verdict could not read (passed; the
/// agent ends their connection).
pub const TOTAL_SEQ_UNKNOWN: u32 = 6;
/// Number of slots in `TOTALS`.
pub const TOTALS_LEN: u32 = 8;

/// Written by the agent only, read by the verdict of the socket it is keyed by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCtl {
    /// Cookie of the socket that receives this socket's bytes.
    pub peer: u64,
    /// The verdict may redirect while `redirected + len <= credit`.
    pub credit: u64,
    /// Passed bytes the agent has read from this socket and fully written to
    /// the peer. The verdict redirects again only once `passed == consumed`,
    /// so no redirected byte overtakes a passed one.
    pub consumed: u64,
    /// Overlap records (`FlowStats::skip_*`) the agent has applied: the
    /// verdict reuses a ring slot only once its record is applied.
    pub skips_done: u64,
}

/// Overlap records the verdict can hold for the agent at once.
pub const SKIP_RING: usize = 4;
/// Set in `FlowStats::next_seq` once the verdict knows where the stream it
/// has handed on ends.
pub const SEQ_KNOWN: u64 = 1 << 32;
/// Offset of `cb` in the kernel's `struct sk_buff` on 64-bit kernels
/// (unchanged since 4.x: two list pointers, the device, the socket and the
/// time stamp come first). `TCP_SKB_CB(skb)->seq` and `->end_seq` are its
/// first eight bytes, which the socket-map code leaves alone; the verdict
/// checks every read against the skb's length.
pub const SKB_CB_OFFSET: usize = 40;

/// Written by the verdict only (one socket's verdict never runs on two CPUs
/// at once: every caller holds the socket lock), read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Payload bytes redirected to the peer's egress.
    pub redirected: u64,
    /// Payload bytes passed to this socket's own queue.
    pub passed: u64,
    /// Zero-length skbs dropped.
    pub empty_dropped: u64,
    /// Redirects the kernel refused.
    pub redirect_failed: u64,
    /// TCP sequence number just past the last byte the verdict handed on,
    /// with `SEQ_KNOWN` set once known (the agent may set it at attach).
    pub next_seq: u64,
    /// Bytes of passed skbs that repeat bytes already handed on, in total.
    /// TCP queues a retransmitted segment that straddles what it already
    /// has whole, and the kernel gives the verdict whole skbs: without this
    /// the overlap would reach the peer twice.
    pub overlap: u64,
    /// Overlap records written, in total; record `i` is in slot
    /// `i % SKIP_RING`.
    pub skips: u64,
    /// Where each overlap starts, as an offset in the passed bytes...
    pub skip_at: [u64; SKIP_RING],
    /// ...and how long it is.
    pub skip_len: [u64; SKIP_RING],
    /// Overlaps the verdict could not record (ring full): the agent ends
    /// the connection before it forwards any byte after them.
    pub skip_overflow: u64,
    /// Skbs whose sequence numbers could not be read, all passed: the agent
    /// ends the connection before it forwards them.
    pub seq_unknown: u64,
}

impl FlowStats {
    /// Bytes that reached the verdict for the first time: what TCP received.
    pub fn fresh(&self) -> u64 {
        (self.redirected + self.passed).saturating_sub(self.overlap)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: `repr(C)`, only `u64` fields, no padding.
    unsafe impl aya::Pod for super::PeerCtl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}

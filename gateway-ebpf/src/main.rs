//! The gateway's in-kernel splice.
//!
//! Both sockets of a connection sit in `SOCKS`, whose stream verdict runs on
//! every skb a socket receives, and in `TARGETS`, which only names redirect
//! targets. The verdict sends each skb to the peer's egress while the agent
//! grants credit, and otherwise passes it to the socket's own queue, where the
//! agent reads it and writes it to the peer itself, in order.
//!
//! Rare events are logged through aya-log for the agent to print: the first
//! failed redirect, unreadable sequence number or full overlap ring of a
//! connection, and a socket the maps do not know each time their count
//! reaches a power of two. Never a line per skb on the common path.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel},
    macros::{map, stream_verdict},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::warn;
use gateway_common::{
    FlowStats, PeerCtl, DEFAULT_MAX_SOCKETS, SEQ_KNOWN, SKB_CB_OFFSET, SKIP_RING, TOTALS_LEN,
    TOTAL_EMPTY_DROPPED, TOTAL_OVERLAP, TOTAL_PASSED, TOTAL_REDIRECTED, TOTAL_REDIRECT_FAILED,
    TOTAL_SEQ_UNKNOWN, TOTAL_UNKNOWN_SOCKET,
};

#[map]
static TARGETS: SockHash<u64> = SockHash::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static SOCKS: SockHash<u64> = SockHash::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static PEERS: HashMap<u64, PeerCtl> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static FLOWS: HashMap<u64, FlowStats> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static TOTALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TOTALS_LEN, 0);

#[stream_verdict]
pub fn gateway_verdict(ctx: SkBuffContext) -> u32 {
    verdict(&ctx)
}

/// Adds `n` to this CPU's total in `slot`; returns the new total.
#[inline(always)]
fn add_total(slot: u32, n: u64) -> u64 {
    match TOTALS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot; preemption is off while a program runs.
        Some(total) => unsafe {
            *total += n;
            *total
        },
        None => 0,
    }
}

#[inline(always)]
fn verdict(ctx: &SkBuffContext) -> u32 {
    let len = u64::from(ctx.len());
    if len == 0 {
        // A bare FIN. TCP has already taken it; redirecting it would make the
        // peer's psock worker fail the send and stop all redirects into the
        // peer (EPIPE). The agent forwards the FIN itself once drained.
        add_total(TOTAL_EMPTY_DROPPED, 1);
        return SK_DROP;
    }
    // SAFETY: the helper takes the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: the value is copied out at once; the agent replaces it whole.
    let ctl = unsafe { PEERS.get(cookie) }.copied();
    let (Some(ctl), Some(flow)) = (ctl, FLOWS.get_ptr_mut(cookie)) else {
        // Not ours yet (or any more): keep the bytes on the socket, where a
        // recv() still finds them.
        let seen = add_total(TOTAL_UNKNOWN_SOCKET, 1);
        if seen.is_power_of_two() {
            warn!(
                ctx,
                "skb of socket {} the maps do not know: passed ({} such skbs on this CPU)",
                cookie,
                seen
            );
        }
        return SK_PASS;
    };
    // SAFETY: only this socket's verdict writes its FlowStats, and it never
    // runs on two CPUs at once (callers hold the socket lock).
    let flow = unsafe { &mut *flow };
    let Some(seq) = skb_seq(ctx, len) else {
        flow.seq_unknown += 1;
        add_total(TOTAL_SEQ_UNKNOWN, 1);
        if flow.seq_unknown == 1 {
            warn!(
                ctx,
                "socket {}: an skb's sequence numbers do not read right; passed, the agent ends the connection",
                cookie
            );
        }
        return pass(flow, len);
    };
    let end = seq.wrapping_add(len as u32);
    if flow.next_seq & SEQ_KNOWN != 0 {
        let next = flow.next_seq as u32;
        // Serial-number arithmetic: how far `seq` is behind `next`.
        let behind = next.wrapping_sub(seq) as i32;
        if behind > 0 {
            let over = (behind as u64).min(len);
            if flow.skips - ctl.skips_done < SKIP_RING as u64 {
                let slot = (flow.skips % SKIP_RING as u64) as usize;
                if slot < SKIP_RING {
                    flow.skip_at[slot] = flow.passed;
                    flow.skip_len[slot] = over;
                }
                flow.skips += 1;
            } else {
                flow.skip_overflow += 1;
                if flow.skip_overflow == 1 {
                    warn!(
                        ctx,
                        "socket {}: overlap ring full; passed, the agent ends the connection",
                        cookie
                    );
                }
            }
            flow.overlap += over;
            add_total(TOTAL_OVERLAP, over);
            if (end.wrapping_sub(next) as i32) > 0 {
                flow.next_seq = u64::from(end) | SEQ_KNOWN;
            }
            return pass(flow, len);
        }
    }
    flow.next_seq = u64::from(end) | SEQ_KNOWN;
    if flow.passed == ctl.consumed && flow.redirected + len <= ctl.credit {
        let mut peer = ctl.peer;
        if TARGETS.redirect_skb(ctx, &mut peer, 0) == i64::from(SK_PASS) {
            flow.redirected += len;
            add_total(TOTAL_REDIRECTED, len);
            return SK_PASS;
        }
        flow.redirect_failed += 1;
        add_total(TOTAL_REDIRECT_FAILED, 1);
        if flow.redirect_failed == 1 {
            warn!(
                ctx,
                "socket {}: redirect to its peer {} failed; passed to the agent", cookie, ctl.peer
            );
        }
    }
    pass(flow, len)
}

/// Pass: the skb lands on this socket's own queue, in order, charged to its
/// receive buffer; the agent moves it.
#[inline(always)]
fn pass(flow: &mut FlowStats, len: u64) -> u32 {
    flow.passed += len;
    add_total(TOTAL_PASSED, len);
    SK_PASS
}

/// `TCP_SKB_CB(skb)->seq`, if the control block reads as this skb's: its
/// `end_seq` must be `len` past `seq` (one more with a FIN). Reading kernel
/// memory needs CAP_PERFMON (root has it); without it the program does not
/// load and the ebpf path is refused, never run blind.
#[inline(always)]
fn skb_seq(ctx: &SkBuffContext, len: u64) -> Option<u32> {
    let cb = (ctx.skb.skb as *const u8).wrapping_add(SKB_CB_OFFSET) as *const [u32; 2];
    // SAFETY: a bounded read of kernel memory into a local; the helper
    // fails cleanly (and the skb is then passed) if it cannot read it.
    let [seq, end_seq] = unsafe { bpf_probe_read_kernel(cb) }.ok()?;
    let span = u64::from(end_seq.wrapping_sub(seq));
    (span == len || span == len + 1).then_some(seq)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

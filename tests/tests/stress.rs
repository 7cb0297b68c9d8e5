//! Many connections at once with random sizes, FIN orders and slow readers,
//! every byte checked: the runs that catch what only shows once in dozens
//! (a FIN forwarded before the psock drained, a zero-length skb redirected,
//! early data stuck in a receive queue, an insertion race).
use gateway_tests::{scenarios, Net};

fn check(net: &Net, dp: &str, n: u64, seed: u64) {
    let n = gateway_tests::scaled(n);
    let m = scenarios::mixed(net, dp, n, 12, seed, 22);
    eprintln!(
        "{} {dp}: {} connections, {} MiB, {} failures",
        net.name(),
        m.connections,
        m.bytes >> 20,
        m.failures
    );
    assert_eq!(m.connections, n);
    assert_eq!(m.failures, 0, "{} {dp}: see the lines above", net.name());
}

#[test]
fn mixed_ebpf_loopback() {
    gateway_tests::needs_root!();
    check(&Net::Loopback, "ebpf", 2000, 1);
}

#[test]
fn mixed_ebpf_veth() {
    gateway_tests::needs_root!();
    check(&Net::veth(), "ebpf", 1000, 2);
}

/// `auto`: the bigger connections move off the copy path mid-stream (to
/// splice; with `auto-ebpf`, into the kernel), the smaller ones end on it.
#[test]
fn mixed_auto_loopback() {
    gateway_tests::needs_root!();
    check(&Net::Loopback, "auto", 600, 5);
}

#[test]
fn mixed_auto_bulk_in_kernel_loopback() {
    gateway_tests::needs_root!();
    check(&Net::Loopback, "auto-ebpf", 600, 7);
}

#[test]
fn mixed_auto_bulk_in_kernel_veth() {
    gateway_tests::needs_root!();
    check(&Net::veth(), "auto-ebpf", 500, 6);
}

#[test]
fn mixed_splice_and_userspace_veth() {
    gateway_tests::needs_root!();
    let net = Net::veth();
    check(&net, "splice", 300, 3);
    check(&net, "userspace", 300, 4);
}

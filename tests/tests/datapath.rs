//! The data path's guarantees, checked on every dataplane: over veth between
//! network namespaces (client, gateway, backend), and a fast subset on
//! loopback.
use gateway_tests::{scenarios, Net};

/// `auto` moves a connection off its copy path mid-stream once it has moved
/// 256 KiB (to splice; `auto-ebpf`: into the kernel) or made 64 reads (into
/// the kernel): the bigger transfers here cross that line, the small ones
/// stay on the copy path.
const DATAPLANES: [&str; 5] = ["ebpf", "auto", "auto-ebpf", "splice", "userspace"];

fn each(net: &Net, f: impl Fn(&Net, &str)) {
    for dp in DATAPLANES {
        f(net, dp);
    }
}

#[test]
fn sizes_loopback() {
    gateway_tests::needs_root!();
    each(&Net::Loopback, scenarios::sizes);
}

#[test]
fn sizes_veth() {
    gateway_tests::needs_root!();
    each(&Net::veth(), scenarios::sizes);
}

#[test]
fn half_close_loopback() {
    gateway_tests::needs_root!();
    each(&Net::Loopback, scenarios::half_close);
}

#[test]
fn half_close_veth() {
    gateway_tests::needs_root!();
    each(&Net::veth(), scenarios::half_close);
}

#[test]
fn early_data_loopback() {
    gateway_tests::needs_root!();
    each(&Net::Loopback, scenarios::early_data);
}

#[test]
fn early_data_veth() {
    gateway_tests::needs_root!();
    each(&Net::veth(), scenarios::early_data);
}

#[test]
fn resets_loopback() {
    gateway_tests::needs_root!();
    each(&Net::Loopback, scenarios::resets);
}

#[test]
fn resets_veth() {
    gateway_tests::needs_root!();
    each(&Net::veth(), scenarios::resets);
}

#[test]
fn backpressure_one_stalled_reader_veth() {
    gateway_tests::needs_root!();
    each(&Net::veth(), |n, dp| scenarios::backpressure(n, dp, 1));
}

#[test]
fn backpressure_many_stalled_readers_veth() {
    gateway_tests::needs_root!();
    let readers = if gateway_tests::reduced() { 4 } else { 8 };
    each(&Net::veth(), |n, dp| {
        scenarios::backpressure(n, dp, readers)
    });
}

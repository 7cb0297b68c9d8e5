//! The entry points of the fuzz targets in `tests/fuzz`: each input goes
//! through the config layer exactly as the agent takes it (limits, YAML,
//! validation, resolution; the admin socket's request; the state file),
//! with no sockets and no BPF. A panic or a hang in any of them is a bug.
use crate::{
    control::{admin, state},
    istio::{self, Agent, Store},
};

/// One file, as `gateway apply -f FILE -n fuzz` or `gateway validate`.
pub fn config(text: &str) {
    let Ok(batch) = istio::parse(text, "fuzz.yaml", Some("fuzz")) else {
        return;
    };
    let _ = Store::new(Agent::default()).apply(&batch.resources);
}

/// A sequence of changes to one store, as a running agent sees them: the
/// parts of `text` between `\n=====\n` lines, applied (every third
/// deleted), each on the last good store.
pub fn changes(text: &str) {
    let mut store = Store::new(Agent::default());
    for (i, part) in text.split("\n=====\n").enumerate().take(16) {
        let Ok(batch) = istio::parse(part, &format!("change-{i}.yaml"), Some("fuzz")) else {
            continue;
        };
        let result = if i % 3 == 2 {
            store.delete(&batch.resources)
        } else {
            store.apply(&batch.resources)
        };
        if let Ok(applied) = result {
            // A store that accepted a change must still resolve.
            assert!(
                applied.store.snapshot().is_ok(),
                "an accepted store does not resolve"
            );
            store = applied.store;
        }
    }
}

/// The admin socket's request, as the agent reads it.
pub fn admin_request(bytes: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<admin::Request>(bytes) {
        let _ = admin::parse(&req);
    }
}

/// The state file, as a starting agent reads it.
pub fn state_file(text: &str) {
    if let Ok(overlay) = state::read_saved(text) {
        let _ = Store::new(Agent::default()).apply(&overlay.applied);
    }
}

/// The pre-parse limits: whenever they pass a text, the parser must not
/// meet flow nesting past its own recursion limit.
pub fn limits(text: &str) {
    if istio::limits::check(text).is_ok() {
        if let Err(e) = istio::parse(text, "fuzz.yaml", Some("fuzz")) {
            let e = e.to_string();
            assert!(
                !(e.contains("recursion limit exceeded") && flow_deep(text)),
                "the limits passed a text the parser found too deep: {e}"
            );
        }
    }
}

/// Whether `text` has 100 or more `[`/`{` in a row (spaces aside), which
/// only flow nesting makes.
fn flow_deep(text: &str) -> bool {
    let mut run = 0;
    for c in text.bytes() {
        match c {
            b'[' | b'{' => {
                run += 1;
                if run >= 100 {
                    return true;
                }
            }
            b' ' | b'\n' => {}
            _ => run = 0,
        }
    }
    false
}

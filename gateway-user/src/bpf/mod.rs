//! The kernel side of the ebpf dataplane: the embedded programs, their maps
//! and totals, and putting a connection's two sockets in and out of them.
pub mod inspect;
pub mod pins;

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::telemetry::KernelTotals;
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, SockHash},
    programs::SkSkb,
    Ebpf, EbpfLoader,
};
use gateway_common::{
    FlowStats, PeerCtl, MAP_FLOWS, MAP_PEERS, MAP_SOCKS, MAP_TARGETS, MAP_TOTALS, PROG_VERDICT,
    SEQ_KNOWN, TOTAL_EMPTY_DROPPED, TOTAL_OVERLAP, TOTAL_PASSED, TOTAL_REDIRECTED,
    TOTAL_REDIRECT_FAILED, TOTAL_SEQ_UNKNOWN, TOTAL_UNKNOWN_SOCKET,
};

/// The compiled programs, built by build.rs from gateway-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Carries the innermost cause only: aya's own chain repeats itself.
    #[error(
        "the ebpf dataplane needs root, or CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN before 5.8; before 5.11 also CAP_SYS_RESOURCE or an RLIMIT_MEMLOCK that fits its maps): {0}"
    )]
    Privileges(String),
    #[error("failed to load the eBPF programs: {0}")]
    Load(String),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("failed to open map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("failed to load program `{PROG_VERDICT}`: {0}")]
    Program(aya::programs::ProgramError),
    /// Another agent of the same instance runs: never a reason to fall
    /// back, always an error.
    #[error(transparent)]
    Busy(pins::PinError),
    #[error("cannot turn on the kernel's BPF run-time statistics (--bpf-stats; Linux 5.8 or later): {0}")]
    RunStats(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The socket left ESTABLISHED (it already received a FIN, or was reset):
    /// the kernel refuses to insert it.
    #[error("socket is no longer established")]
    NotEstablished,
    #[error("the socket maps are full")]
    Full,
    #[error("failed to read the socket cookie: {0}")]
    Cookie(#[source] io::Error),
    /// Where the copy path's reads ended could not be read (it needs
    /// CAP_NET_ADMIN, and a socket without its peer's FIN).
    #[error("cannot read where the bytes already read end: {0}")]
    Anchor(#[source] io::Error),
    #[error("failed to update map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

struct Maps {
    targets: SockHash<MapData, u64>,
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, PeerCtl>,
    flows: HashMap<MapData, u64, FlowStats>,
    totals: PerCpuArray<MapData, u64>,
}

pub struct Kernel {
    /// Owns the loaded program; the attachment lives as long as `SOCKS`
    /// does.
    ebpf: Ebpf,
    /// While held, the kernel counts every BPF program's runs and run time
    /// (closing it turns them off unless another process holds one).
    run_stats: Option<OwnedFd>,
    maps: Mutex<Maps>,
    /// Totals at the last `rebase`: the start-up check's bytes are not the
    /// users'.
    base: Mutex<KernelTotals>,
    /// The maps' pins, removed at a clean stop ([`Kernel::unpin`]).
    pins: Mutex<Option<pins::Pins>>,
    /// For the tests only: a pause between the two sockets' insertions into
    /// `SOCKS`, which widens the window in which a peer's FIN or reset makes
    /// the second insertion fail after the first socket's verdict has run.
    attach_pause: Option<std::time::Duration>,
    /// Until the dataplane takes it to read.
    logger: Mutex<Option<Logger>>,
    /// `GATEWAY_TEST_FORGET_CLIENT`, once the start-up check has passed.
    forget_client: std::sync::atomic::AtomicBool,
}

/// `GATEWAY_TEST_ATTACH_PAUSE_MS`: see [`Kernel::attach_pause`].
#[cfg(feature = "test-hooks")]
fn attach_pause() -> Option<std::time::Duration> {
    std::env::var("GATEWAY_TEST_ATTACH_PAUSE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis)
}

#[cfg(not(feature = "test-hooks"))]
fn attach_pause() -> Option<std::time::Duration> {
    None
}

/// `GATEWAY_TEST_FORGET_CLIENT`: each attached client socket loses its
/// control record at once, so that its verdict meets a socket the maps do
/// not know (and says so in the agent's log).
#[cfg(feature = "test-hooks")]
fn forget_client() -> bool {
    std::env::var_os("GATEWAY_TEST_FORGET_CLIENT").is_some()
}

#[cfg(not(feature = "test-hooks"))]
fn forget_client() -> bool {
    false
}

/// What the verdict logs (aya-log's ring buffer), read by the agent and
/// written to its own log through the `log` bridge.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The two cookies of an attached connection.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub a: u64,
    pub b: u64,
    /// Whether `b` got the verdict. If not (the kernel refused it after `a`
    /// was in), `b` is only a redirect target and the agent copies what it
    /// receives.
    pub b_verdict: bool,
}

/// The innermost error of a chain, and whether it is a permission error.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let denied = cur.downcast_ref::<io::Error>().is_some_and(|io| {
        io.kind() == io::ErrorKind::PermissionDenied || io.raw_os_error() == Some(libc::EPERM)
    });
    // aya's messages nest ("map error: failed to create map `X`: ..."): keep
    // the deepest part that names an object, then the cause.
    let cause = cur.to_string();
    let mut what = String::new();
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        let text = x.to_string();
        if let Some(named) = text.split(": ").filter(|p| p.contains('`')).last() {
            what = named.to_owned();
        }
        e = x.source();
    }
    let msg = if what.is_empty() {
        cause
    } else {
        format!("{what}: {cause}")
    };
    (msg, denied)
}

/// Pins every map of `ebpf` under `dir`; `None` (with a warning) where
/// that cannot be done, an error only when another agent holds `dir`.
fn pin_all(ebpf: &Ebpf, dir: &Path) -> Result<Option<pins::Pins>, LoadError> {
    let mut pins = match pins::Pins::take(dir) {
        Ok(p) => p,
        Err(e @ pins::PinError::Busy(_)) => return Err(LoadError::Busy(e)),
        Err(e) => {
            tracing::warn!("the maps are not pinned, `gateway inspect` cannot see them: {e}");
            return Ok(None);
        }
    };
    for name in pins::MAPS {
        let Some(map) = ebpf.map(name) else {
            return Err(LoadError::MissingMap(name));
        };
        if let Err(e) = pins.pin(name, map) {
            tracing::warn!("the maps are not pinned, `gateway inspect` cannot see them: {e}");
            return Ok(None);
        }
    }
    tracing::debug!("maps pinned under {}", pins.dir().display());
    Ok(Some(pins))
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> AttachError {
    move |source| match &source {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            AttachError::NotEstablished
        }
        MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::ENOMEM | libc::E2BIG)) =>
        {
            AttachError::Full
        }
        _ => AttachError::Map { name, source },
    }
}

impl Kernel {
    /// Loads the programs with maps sized for `max_sockets` sockets,
    /// pins the maps under `pin_dir` (if given) and attaches the verdict
    /// to `SOCKS`. Pinning serves inspection only: where bpffs is missing
    /// the agent runs unpinned, with a warning.
    pub fn load(max_sockets: u32, pin_dir: Option<&Path>) -> Result<Self, LoadError> {
        // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK; later ones ignore it.
        let _ = crate::sys::raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_TARGETS, max_sockets)
            .map_max_entries(MAP_SOCKS, max_sockets)
            .map_max_entries(MAP_PEERS, max_sockets)
            .map_max_entries(MAP_FLOWS, max_sockets)
            .load(PROGRAMS)
            .map_err(|e| match root_cause(&e) {
                (msg, true) => LoadError::Privileges(msg),
                (msg, false) => LoadError::Load(msg),
            })?;
        let pins = match pin_dir {
            Some(dir) => pin_all(&ebpf, dir)?,
            None => None,
        };
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let maps = Maps {
            targets: take(&mut ebpf, MAP_TARGETS)?,
            socks: take(&mut ebpf, MAP_SOCKS)?,
            peers: take(&mut ebpf, MAP_PEERS)?,
            flows: take(&mut ebpf, MAP_FLOWS)?,
            totals: take(&mut ebpf, MAP_TOTALS)?,
        };
        let prog: &mut SkSkb = ebpf
            .program_mut(PROG_VERDICT)
            .ok_or(LoadError::Program(aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(LoadError::Program)?;
        prog.load().map_err(LoadError::Program)?;
        prog.attach(maps.socks.fd()).map_err(LoadError::Program)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "the verdict's log cannot be read; its counters still count");
                None
            }
        };
        Ok(Self {
            logger: Mutex::new(logger),
            forget_client: std::sync::atomic::AtomicBool::new(false),
            ebpf,
            run_stats: None,
            maps: Mutex::new(maps),
            base: Mutex::default(),
            pins: Mutex::new(pins),
            attach_pause: attach_pause(),
        })
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<PathBuf> {
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.as_ref().map(|p| p.dir().to_path_buf())
    }

    /// The start-up check has passed: the test hooks that would break it
    /// may act now.
    pub fn checked(&self) {
        self.forget_client
            .store(forget_client(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The verdict's log, once: whoever takes it reads it.
    pub fn take_logger(&self) -> Option<Logger> {
        self.logger.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Removes the pins (a clean stop): nothing is left for `inspect`.
    pub fn unpin(&self) {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Turns the kernel's run-time statistics on for as long as this lives,
    /// so that the totals carry the verdict's runs and run time.
    pub fn time_runs(&mut self) -> Result<(), LoadError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| LoadError::RunStats(root_cause(&e).0))?;
        self.run_stats = Some(fd);
        Ok(())
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // with the kernel: every update is one syscall.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts both sockets in the maps so that each one's received bytes go to
    /// the other, then makes the verdict run on bytes already queued.
    ///
    /// Order matters (data path note, fact 5): both sockets become redirect
    /// targets and get their control records before either gets the verdict,
    /// so no verdict ever runs without its peer in place.
    /// `credit[0]` is what `a`'s verdict may redirect to `b` at first,
    /// `credit[1]` the reverse.
    ///
    /// The kernel refuses a socket that has left ESTABLISHED, and a peer's
    /// FIN (or reset) can land on `b` between the two insertions into
    /// `SOCKS`. By then `a`'s verdict may have taken bytes off `a`, which can
    /// then no longer be read from it the ordinary way, so `a` stays in: the
    /// pair is kept with `b` a redirect target only (`Pair::b_verdict` false),
    /// and what `b` receives is the agent's to copy. Taking both out and
    /// falling back to splice lost what `a`'s verdict had taken (seen: 1 MiB
    /// of 4 behind a backend that half-closed at once).
    pub fn attach(
        &self,
        a: &impl AsRawFd,
        b: &impl AsRawFd,
        credit: [u64; 2],
        next_seq: [Option<u32>; 2],
    ) -> Result<Pair, AttachError> {
        let mut pair = Pair {
            a: crate::sys::cookie(a).map_err(AttachError::Cookie)?,
            b: crate::sys::cookie(b).map_err(AttachError::Cookie)?,
            b_verdict: true,
        };
        let mut maps = self.maps();
        let result = (|| {
            let sides = [
                (pair.a, pair.b, credit[0], next_seq[0]),
                (pair.b, pair.a, credit[1], next_seq[1]),
            ];
            for (me, peer, credit, next_seq) in sides {
                // Where the bytes the agent already read end, if any: the
                // verdict treats anything before it as a repeat. A socket
                // nobody has read yet needs none: the first skb the verdict
                // sees starts where the stream does.
                let flow = FlowStats {
                    next_seq: next_seq.map_or(0, |s| u64::from(s) | SEQ_KNOWN),
                    ..FlowStats::default()
                };
                maps.flows.insert(me, flow, 0).map_err(map_err(MAP_FLOWS))?;
                maps.peers
                    .insert(
                        me,
                        PeerCtl {
                            peer,
                            credit,
                            consumed: 0,
                            skips_done: 0,
                        },
                        0,
                    )
                    .map_err(map_err(MAP_PEERS))?;
            }
            maps.targets
                .insert(pair.a, a.as_raw_fd(), 0)
                .map_err(map_err(MAP_TARGETS))?;
            maps.targets
                .insert(pair.b, b.as_raw_fd(), 0)
                .map_err(map_err(MAP_TARGETS))?;
            maps.socks
                .insert(pair.a, a.as_raw_fd(), 0)
                .map_err(map_err(MAP_SOCKS))?;
            Ok(())
        })();
        if let Err(e) = result {
            // No verdict has run: both sockets are as they were.
            Self::remove(&mut maps, pair);
            return Err(e);
        }
        if let Some(pause) = self.attach_pause {
            std::thread::sleep(pause);
        }
        if maps.socks.insert(pair.b, b.as_raw_fd(), 0).is_err() {
            pair.b_verdict = false;
        }
        if self
            .forget_client
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = maps.peers.remove(&pair.a);
        }
        drop(maps);
        // Bytes that arrived before insertion wait for the next segment unless
        // the data-ready path runs again (fact 4).
        let _ = crate::sys::set_rcvlowat(a, 1);
        if pair.b_verdict {
            let _ = crate::sys::set_rcvlowat(b, 1);
        }
        Ok(pair)
    }

    fn remove(maps: &mut Maps, pair: Pair) {
        for c in [pair.a, pair.b] {
            // Absent keys are fine: this also undoes a partial attach.
            let _ = maps.socks.remove(&c);
            let _ = maps.targets.remove(&c);
            let _ = maps.peers.remove(&c);
            let _ = maps.flows.remove(&c);
        }
    }

    /// Takes both sockets out of every map and returns their last counters.
    /// Call only once both directions are drained: removal discards what is
    /// still queued on a socket's psock.
    pub fn detach(&self, pair: Pair) -> [FlowStats; 2] {
        let mut maps = self.maps();
        let stats = [pair.a, pair.b].map(|c| maps.flows.get(&c, 0).unwrap_or_default());
        Self::remove(&mut maps, pair);
        stats
    }

    pub fn flow(&self, cookie: u64) -> Option<FlowStats> {
        self.maps().flows.get(&cookie, 0).ok()
    }

    pub fn set_ctl(&self, cookie: u64, ctl: PeerCtl) -> Result<(), MapError> {
        self.maps().peers.insert(cookie, ctl, 0)
    }

    /// Number of entries in each map: (sockets, control records, flows).
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let maps = self.maps();
        (
            maps.socks.keys().count(),
            maps.peers.keys().count(),
            maps.flows.keys().count(),
        )
    }

    /// Totals since the last `rebase` (or the load).
    pub fn totals(&self) -> KernelTotals {
        let now = self.raw_totals();
        let base = *self.base.lock().unwrap_or_else(|p| p.into_inner());
        now.since(&base)
    }

    /// Counts totals from now on.
    pub fn rebase(&self) {
        let now = self.raw_totals();
        *self.base.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// The verdict's run count and run time (ns), as the kernel counts them
    /// while this process asks it to (another process may turn the
    /// statistics on too: those counts are not reported).
    fn verdict_runs(&self) -> (u64, u64) {
        if self.run_stats.is_none() {
            return (0, 0);
        }
        let info = self
            .ebpf
            .program(PROG_VERDICT)
            .and_then(|p| <&SkSkb>::try_from(p).ok())
            .and_then(|p| p.info().ok());
        info.map_or((0, 0), |i| {
            (
                i.run_count(),
                u64::try_from(i.run_time().as_nanos()).unwrap_or(u64::MAX),
            )
        })
    }

    fn raw_totals(&self) -> KernelTotals {
        let (verdict_runs, verdict_run_ns) = self.verdict_runs();
        let maps = self.maps();
        let sum = |slot: u32| -> u64 {
            maps.totals
                .get(&slot, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        KernelTotals {
            redirected_bytes: sum(TOTAL_REDIRECTED),
            passed_bytes: sum(TOTAL_PASSED),
            empty_dropped: sum(TOTAL_EMPTY_DROPPED),
            unknown_socket: sum(TOTAL_UNKNOWN_SOCKET),
            redirect_failed: sum(TOTAL_REDIRECT_FAILED),
            overlap_bytes: sum(TOTAL_OVERLAP),
            seq_unknown: sum(TOTAL_SEQ_UNKNOWN),
            verdict_runs,
            verdict_run_ns,
        }
    }
}

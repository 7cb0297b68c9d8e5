//! The agent's maps pinned on bpffs, one directory per instance, so that
//! `gateway inspect` (and bpftool) can read them while the agent runs and
//! after it died.
//!
//! The running agent holds an exclusive `flock` on its directory for as
//! long as it lives: the kernel drops it when the process dies, however it
//! dies. A second agent of the same instance is refused while the first
//! holds it; a restarted one finds it free and removes what the dead one
//! left; `inspect` tells the two cases apart with a shared lock.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use gateway_common::{MAP_FLOWS, MAP_PEERS, MAP_SOCKS, MAP_TARGETS, MAP_TOTALS};

/// Where each instance's directory is made.
pub const ROOT: &str = "/sys/fs/bpf/gateway";
/// Every map the agent pins, in the order `inspect` lists them.
pub const MAPS: [&str; 5] = [MAP_SOCKS, MAP_TARGETS, MAP_PEERS, MAP_FLOWS, MAP_TOTALS];
/// `statfs`'s magic number for bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "another gateway agent of this instance holds {0} (give each agent its own --instance)"
    )]
    Busy(PathBuf),
    #[error("{0} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The default directory of `instance`.
pub fn instance_dir(instance: &str) -> PathBuf {
    Path::new(ROOT).join(instance)
}

/// An instance name is one path component of letters, digits, `-`, `_`
/// and `.` (not `.` or `..`).
pub fn check_instance(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{name}` is not an instance name (up to 64 letters, digits, `-`, `_`, `.`)"
        ))
    }
}

fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a buffer of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn flock(dir: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: a descriptor this function's caller owns.
    if unsafe { libc::flock(dir.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The directory this agent pins into, locked for its life. Dropping it
/// removes the pins and the directory.
#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    _lock: File,
    pinned: Vec<PathBuf>,
}

impl Pins {
    /// Creates and locks `dir`, and removes what an agent that died left
    /// in it.
    pub fn take(dir: &Path) -> Result<Pins, PinError> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        if !on_bpffs(parent).map_err(io_at(parent))? {
            return Err(PinError::NotBpffs(parent.to_path_buf()));
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(dir)(e)),
        }
        let lock = File::open(dir).map_err(io_at(dir))?;
        if !flock(&lock, libc::LOCK_EX).map_err(io_at(dir))? {
            return Err(PinError::Busy(dir.to_path_buf()));
        }
        let mut stale = 0;
        for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let path = entry.map_err(io_at(dir))?.path();
            std::fs::remove_file(&path).map_err(io_at(&path))?;
            stale += 1;
        }
        if stale > 0 {
            tracing::info!(
                "removed {stale} pins an agent that stopped without cleaning up left in {}",
                dir.display()
            );
        }
        Ok(Pins {
            dir: dir.to_path_buf(),
            _lock: lock,
            pinned: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pin(&mut self, name: &str, map: &aya::maps::Map) -> Result<(), PinError> {
        let path = self.dir.join(name);
        map.pin(&path).map_err(|e| PinError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        self.pinned.push(path);
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for p in &self.pinned {
            let _ = std::fs::remove_file(p);
        }
        // Fails, harmlessly, if something else was put there.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether an agent holds `dir` now (`None`: it cannot be told).
pub fn held(dir: &Path) -> Option<bool> {
    let f = File::open(dir).ok()?;
    flock(&f, libc::LOCK_SH).ok().map(|free| !free)
}

#[cfg(test)]
mod tests {
    use super::check_instance;

    #[test]
    fn instance_names_are_one_path_component() {
        assert!(check_instance("default").is_ok());
        assert!(check_instance("forward-31400").is_ok());
        for bad in ["", ".", "..", "a/b", "x y", &"a".repeat(65)] {
            assert!(check_instance(bad).is_err(), "{bad}");
        }
    }
}

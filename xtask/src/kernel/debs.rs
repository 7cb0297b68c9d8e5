//! Debian's kernel builds: resolved with apt against a private sources
//! list, downloaded, and only the bzImage kept in the cache.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use super::{cache_dir, Series};
use crate::util;

pub(super) fn ensure_qemu() -> anyhow::Result<()> {
    if util::quiet(Command::new("qemu-system-x86_64").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask: installing qemu-system-x86");
    let install = || {
        util::quiet(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "qemu-system-x86",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if !install() {
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        if !install() {
            bail!("could not install qemu-system-x86 (apt-get install -y qemu-system-x86)");
        }
    }
    Ok(())
}

/// apt options that keep everything in `dir`.
pub(super) fn apt(tool: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
        ("APT::Architecture", PathBuf::from("amd64")),
        ("APT::Sandbox::User", PathBuf::from("root")),
        // Only the package indices: not translations, not AppStream data.
        ("Acquire::Languages", PathBuf::from("none")),
        (
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled",
            PathBuf::from("false"),
        ),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd
}

/// The newest Debian build of `s`: its version and a cached bzImage. Without
/// a network, the newest one cached earlier.
pub(super) fn kernel(s: &Series) -> anyhow::Result<(String, PathBuf)> {
    let dir = cache_dir().join(s.name);
    let apt_dir = dir.join("apt");
    fs::create_dir_all(apt_dir.join("lists/partial"))?;
    fs::create_dir_all(apt_dir.join("cache/archives/partial"))?;
    fs::write(apt_dir.join("sources.list"), s.sources.join("\n") + "\n")?;
    match newest(s, &dir, &apt_dir) {
        Ok(found) => Ok(found),
        Err(e) => {
            let cached = cached(&dir);
            match cached {
                Some((version, path)) => {
                    eprintln!(
                        "xtask: kernel {}: cannot ask Debian ({e:#}); using the cached {version}",
                        s.name
                    );
                    Ok((version, path))
                }
                None => Err(e),
            }
        }
    }
}

pub(super) fn cached(dir: &Path) -> Option<(String, PathBuf)> {
    let mut found: Vec<(std::time::SystemTime, String, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.metadata().ok()?.modified().ok()?, version, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, v, p)| (v, p))
}

pub(super) fn newest(s: &Series, dir: &Path, apt_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    util::output(apt("apt-get", apt_dir).args(["-qq", "update"]))
        .context("apt-get update (private sources list)")?;
    // The metapackage depends on the current build's image package.
    let deps =
        util::output(apt("apt-cache", apt_dir).args(["depends", "linux-image-cloud-amd64"]))?;
    let version = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .find(|v| v.ends_with("-cloud-amd64"))
        .with_context(|| {
            format!("no kernel image in linux-image-cloud-amd64's dependencies:\n{deps}")
        })?
        .to_string();
    let vmlinuz = dir.join(format!("vmlinuz-{version}"));
    let veth = dir.join(format!("veth-{version}.ko"));
    if vmlinuz.exists() && veth.exists() {
        return Ok((version, vmlinuz));
    }
    // Older releases ship the image and its modules in
    // linux-image-V-unsigned, newer ones in linux-binary-unsigned-V and
    // linux-modules-V; the signed packages boot as well.
    let download = dir.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    for pkg in [
        format!("linux-image-{version}-unsigned"),
        format!("linux-binary-unsigned-{version}"),
        format!("linux-modules-{version}"),
        format!("linux-image-{version}"),
        format!("linux-binary-{version}"),
    ] {
        if vmlinuz.exists() && veth.exists() {
            break;
        }
        eprintln!("xtask: kernel {}: fetching {pkg}", s.name);
        if !util::quiet(
            apt("apt-get", apt_dir)
                .current_dir(&download)
                .args(["-qq", "download", &pkg]),
        ) {
            continue;
        }
        let Some(deb) = fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
        else {
            continue;
        };
        if !vmlinuz.exists() {
            extract(&deb, "*/vmlinuz*", "cat", &vmlinuz);
        }
        if !veth.exists() {
            // Modules may be compressed; the guest gets them plain.
            for (glob, unpack) in [
                ("*/veth.ko", "cat"),
                ("*/veth.ko.xz", "xz -dc"),
                ("*/veth.ko.zst", "zstd -dc"),
                ("*/veth.ko.gz", "gzip -dc"),
            ] {
                if extract(&deb, glob, unpack, &veth) {
                    break;
                }
            }
        }
        let _ = fs::remove_file(&deb);
    }
    let _ = fs::remove_dir_all(&download);
    if !vmlinuz.exists() {
        bail!("no package of kernel {version} held a vmlinuz");
    }
    if !veth.exists() {
        bail!("no package of kernel {version} held veth.ko (the veth tests need it)");
    }
    Ok((version, vmlinuz))
}

/// Extracts the member of `deb` matching `glob` through `unpack` into
/// `to`; true if it held something.
pub(super) fn extract(deb: &Path, glob: &str, unpack: &str, to: &Path) -> bool {
    let partial = to.with_extension("partial");
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -O --wildcards '{glob}' | {unpack} > \"$2\""
    );
    let _ = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(deb)
        .arg(&partial)
        .stderr(Stdio::null())
        .status();
    if fs::metadata(&partial).is_ok_and(|m| m.len() > 1024) {
        fs::rename(&partial, to).is_ok()
    } else {
        let _ = fs::remove_file(&partial);
        false
    }
}

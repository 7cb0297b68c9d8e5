//! Reading an instance's pinned maps from outside the agent: what
//! `gateway inspect maps` shows, decoded into the project's types.
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapInfo, MapType, PerCpuArray, SockHash};
use gateway_common::{
    FlowStats, PeerCtl, MAP_FLOWS, MAP_PEERS, MAP_SOCKS, MAP_TARGETS, TOTAL_EMPTY_DROPPED,
    TOTAL_OVERLAP, TOTAL_PASSED, TOTAL_REDIRECTED, TOTAL_REDIRECT_FAILED, TOTAL_SEQ_UNKNOWN,
    TOTAL_UNKNOWN_SOCKET,
};
use serde::Serialize;
use serde_json::{json, Value};

use super::pins;

/// One map as `bpftool map show` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct MapView {
    pub name: &'static str,
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    /// Keys present (an array's are all its slots).
    pub entries: u64,
    pub max_entries: u32,
    pub pin: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "nothing is pinned at {0}: no agent of this instance ran with the ebpf or auto dataplane \
         since it last stopped cleanly (--instance and --bpffs must match the agent's)"
    )]
    NothingPinned(PathBuf),
    #[error("cannot read {0}: permission denied (the pins are root's: run as root)")]
    Denied(PathBuf),
    #[error("no map `{name}`: the gateway's maps are {}", pins::MAPS.join(", "))]
    UnknownMap { name: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> InspectError {
    let message = e.to_string();
    if message.contains("ermission denied") || message.contains("Operation not permitted") {
        InspectError::Denied(path.to_path_buf())
    } else {
        InspectError::Read {
            path: path.to_path_buf(),
            message,
        }
    }
}

/// bpftool's names for the map types the gateway uses.
fn type_name(t: Result<MapType, aya::maps::MapError>) -> String {
    match t {
        Ok(MapType::SockHash) => "sockhash".into(),
        Ok(MapType::Hash) => "hash".into(),
        Ok(MapType::PerCpuArray) => "percpu_array".into(),
        Ok(other) => format!("{other:?}").to_lowercase(),
        Err(_) => "unknown".into(),
    }
}

fn open(dir: &Path, name: &str) -> Result<Option<(PathBuf, Map)>, InspectError> {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(&path, e)),
        Ok(_) => {}
    }
    let data = MapData::from_pin(&path).map_err(|e| read_err(&path, root(&e)))?;
    let map = Map::from_map_data(data).map_err(|e| read_err(&path, root(&e)))?;
    Ok(Some((path, map)))
}

/// aya's errors nest; the innermost says what went wrong.
fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn count<K: aya::Pod>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> u64 {
    keys.filter(Result::is_ok).count() as u64
}

/// Every pinned map of the instance at `dir`.
pub fn maps(dir: &Path) -> Result<Vec<MapView>, InspectError> {
    let mut out = Vec::new();
    for name in pins::MAPS {
        let Some((path, map)) = open(dir, name)? else {
            continue;
        };
        let info: MapInfo = MapInfo::from_pin(&path).map_err(|e| read_err(&path, root(&e)))?;
        let entries = match name {
            MAP_SOCKS | MAP_TARGETS => SockHash::<_, u64>::try_from(&map)
                .map(|m| count(m.keys()))
                .unwrap_or(0),
            MAP_PEERS => HashMap::<_, u64, PeerCtl>::try_from(&map)
                .map(|m| count(m.keys()))
                .unwrap_or(0),
            MAP_FLOWS => HashMap::<_, u64, FlowStats>::try_from(&map)
                .map(|m| count(m.keys()))
                .unwrap_or(0),
            _ => u64::from(info.max_entries()),
        };
        out.push(MapView {
            name,
            id: info.id(),
            kind: type_name(info.map_type()),
            key_size: info.key_size(),
            value_size: info.value_size(),
            entries,
            max_entries: info.max_entries(),
            pin: path,
        });
    }
    if out.is_empty() {
        if let Err(e) = std::fs::read_dir(dir) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(InspectError::Denied(dir.to_path_buf()));
            }
        }
        return Err(InspectError::NothingPinned(dir.to_path_buf()));
    }
    Ok(out)
}

/// The map `name`'s entries, decoded: one JSON object per entry.
pub fn entries(dir: &Path, name: &str) -> Result<Vec<Value>, InspectError> {
    let Some(&name) = pins::MAPS.iter().find(|m| m.eq_ignore_ascii_case(name)) else {
        return Err(InspectError::UnknownMap {
            name: name.to_string(),
        });
    };
    let Some((path, map)) = open(dir, name)? else {
        return Err(InspectError::NothingPinned(dir.to_path_buf()));
    };
    let bad = |e: aya::maps::MapError| read_err(&path, root(&e));
    let rows = match name {
        MAP_SOCKS | MAP_TARGETS => {
            let m = SockHash::<_, u64>::try_from(&map).map_err(bad)?;
            m.keys()
                .filter_map(Result::ok)
                .map(|cookie| json!({ "cookie": cookie }))
                .collect()
        }
        MAP_PEERS => {
            let m = HashMap::<_, u64, PeerCtl>::try_from(&map).map_err(bad)?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(cookie, c)| {
                    json!({
                        "cookie": cookie,
                        "peer": c.peer,
                        "credit": c.credit,
                        "consumed": c.consumed,
                        "skips_done": c.skips_done,
                    })
                })
                .collect()
        }
        MAP_FLOWS => {
            let m = HashMap::<_, u64, FlowStats>::try_from(&map).map_err(bad)?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(cookie, f)| {
                    json!({
                        "cookie": cookie,
                        "redirected": f.redirected,
                        "passed": f.passed,
                        "fresh": f.fresh(),
                        "overlap": f.overlap,
                        "empty_dropped": f.empty_dropped,
                        "redirect_failed": f.redirect_failed,
                        "skips": f.skips,
                        "skip_overflow": f.skip_overflow,
                        "seq_unknown": f.seq_unknown,
                        "next_seq": if f.next_seq & gateway_common::SEQ_KNOWN != 0 {
                            json!(f.next_seq as u32)
                        } else {
                            Value::Null
                        },
                    })
                })
                .collect()
        }
        _ => {
            let m = PerCpuArray::<_, u64>::try_from(&map).map_err(bad)?;
            [
                ("redirected_bytes", TOTAL_REDIRECTED),
                ("passed_bytes", TOTAL_PASSED),
                ("empty_dropped", TOTAL_EMPTY_DROPPED),
                ("unknown_socket", TOTAL_UNKNOWN_SOCKET),
                ("redirect_failed", TOTAL_REDIRECT_FAILED),
                ("overlap_bytes", TOTAL_OVERLAP),
                ("seq_unknown", TOTAL_SEQ_UNKNOWN),
            ]
            .into_iter()
            .map(|(total, slot)| {
                let per_cpu: Vec<u64> = m.get(&slot, 0).map(|v| v.to_vec()).unwrap_or_default();
                json!({
                    "slot": slot,
                    "total": total,
                    "value": per_cpu.iter().sum::<u64>(),
                    "per_cpu": per_cpu,
                })
            })
            .collect()
        }
    };
    Ok(rows)
}

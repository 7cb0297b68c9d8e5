//! `gateway inspect`: what a gateway serves. Connections and routes come
//! from the running agent over its admin socket; maps from its pinned maps,
//! whether its agent runs or died.
use std::path::PathBuf;

use crate::{
    bpf::{inspect, pins},
    control::admin,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
    /// The agent's instance (its `--instance`).
    #[arg(long, global = true, value_name = "NAME", default_value = super::run::DEFAULT_INSTANCE,
          value_parser = pins::check_instance)]
    instance: String,
    /// The agent's pin directory, if it was given `--bpffs`.
    #[arg(long, global = true, value_name = "DIR")]
    bpffs: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Output,
    /// The agent's admin socket (its `--admin`), for connections and routes.
    #[arg(long, global = true, value_name = "PATH", default_value = admin::DEFAULT_ADMIN)]
    admin: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// One row per live connection: client, gateway port, route, cluster,
    /// backend, dataplane, state, age, and the bytes each way (with what
    /// the kernel moved of them).
    Connections,
    /// Per gateway port, each destination's weight beside the share of
    /// connections it really received since the weights were set.
    Routes,
    /// Each pinned map like `bpftool map show` (id, type, key and value
    /// size, entries used / max, pin path); with a NAME, its entries
    /// decoded.
    Maps {
        /// SOCKS, TARGETS, PEERS, FLOWS or TOTALS.
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn inspect(args: Args) -> anyhow::Result<()> {
    let dir = args
        .bpffs
        .clone()
        .unwrap_or_else(|| pins::instance_dir(&args.instance));
    let agent = match pins::held(&dir) {
        Some(true) => "running",
        Some(false) => "not running",
        None => "unknown",
    };
    match args.what {
        What::Connections => return connections(&args),
        What::Routes => return routes(&args),
        What::Maps { name: None } => {
            let maps = inspect::maps(&dir)?;
            if args.output == Output::Json {
                let doc = serde_json::json!({
                    "instance": args.instance,
                    "pin_dir": dir,
                    "agent": agent,
                    "maps": maps,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            say_agent(agent, &dir);
            let rows: Vec<Vec<String>> = maps
                .iter()
                .map(|m| {
                    vec![
                        m.name.to_string(),
                        m.id.to_string(),
                        m.kind.clone(),
                        m.key_size.to_string(),
                        m.value_size.to_string(),
                        format!("{}/{}", m.entries, m.max_entries),
                        m.pin.display().to_string(),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "ID", "TYPE", "KEY", "VALUE", "ENTRIES", "PIN"],
                &rows,
            );
        }
        What::Maps { name: Some(name) } => {
            let rows = inspect::entries(&dir, &name)?;
            if args.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            say_agent(agent, &dir);
            let Some(first) = rows.first().and_then(|r| r.as_object()) else {
                println!("{} is empty", name.to_uppercase());
                return Ok(());
            };
            let header: Vec<String> = first.keys().map(|k| k.to_uppercase()).collect();
            let keys: Vec<&String> = first.keys().collect();
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    keys.iter()
                        .map(|k| match &r[k.as_str()] {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "-".into(),
                            v => v.to_string(),
                        })
                        .collect()
                })
                .collect();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            print_table(&header, &table);
        }
    }
    Ok(())
}

/// Asks the agent over its admin socket.
fn ask(args: &Args, op: admin::Op) -> anyhow::Result<admin::Response> {
    let r = admin::call(&args.admin, &admin::Request::query(op))?;
    if let Some(e) = r.errors.first() {
        anyhow::bail!("{e}");
    }
    Ok(r)
}

fn connections(args: &Args) -> anyhow::Result<()> {
    let r = ask(args, admin::Op::Connections)?;
    let conns = r.connections.unwrap_or_default();
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&conns)?);
        return Ok(());
    }
    println!(
        "agent: dataplane {}, config generation {}, {} live connection{}",
        r.dataplane.as_deref().unwrap_or("?"),
        r.generation,
        conns.len(),
        if conns.len() == 1 { "" } else { "s" }
    );
    if conns.is_empty() {
        return Ok(());
    }
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.client.clone(),
                c.port.to_string(),
                c.route.clone(),
                dash(&c.cluster),
                dash(&c.backend),
                c.dataplane.clone(),
                c.state.clone(),
                age(c.age_seconds),
                c.bytes_from_client.to_string(),
                c.bytes_to_client.to_string(),
                format!(
                    "{}/{}",
                    c.kernel_bytes_from_client, c.kernel_bytes_to_client
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "CLIENT",
            "PORT",
            "ROUTE",
            "CLUSTER",
            "BACKEND",
            "DATAPLANE",
            "STATE",
            "AGE",
            "FROM CLIENT",
            "TO CLIENT",
            "IN KERNEL",
        ],
        &rows,
    );
    Ok(())
}

fn routes(args: &Args) -> anyhow::Result<()> {
    let r = ask(args, admin::Op::Routes)?;
    let routes = r.routes.unwrap_or_default();
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&routes)?);
        return Ok(());
    }
    println!(
        "agent: dataplane {}, config generation {}, {} port{}",
        r.dataplane.as_deref().unwrap_or("?"),
        r.generation,
        routes.len(),
        if routes.len() == 1 { "" } else { "s" }
    );
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let mut rows = Vec::new();
    for route in &routes {
        for (i, d) in route.destinations.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first {
                    route.port.to_string()
                } else {
                    String::new()
                },
                if first {
                    route.route.clone()
                } else {
                    String::new()
                },
                d.cluster.clone(),
                format!("{} ({})", d.weight, pct(d.weight_share)),
                d.connections.to_string(),
                if route.connections == 0 {
                    "-".into()
                } else {
                    pct(d.share)
                },
            ]);
        }
        rows.push(vec![
            String::new(),
            String::new(),
            "total".into(),
            route
                .destinations
                .iter()
                .map(|d| d.weight)
                .sum::<u32>()
                .to_string(),
            route.connections.to_string(),
            String::new(),
        ]);
    }
    print_table(
        &[
            "PORT",
            "ROUTE",
            "DESTINATION",
            "WEIGHT",
            "CONNECTIONS",
            "SHARE",
        ],
        &rows,
    );
    for line in &r.status {
        println!("status: {line}");
    }
    Ok(())
}

fn age(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn say_agent(agent: &str, dir: &std::path::Path) {
    match agent {
        "running" => println!("agent: running; pins at {}", dir.display()),
        "not running" => println!(
            "agent: not running; these pins at {} were left by an agent that did not stop \
             cleanly (the next agent of this instance removes them)",
            dir.display()
        ),
        _ => println!("agent: cannot tell; pins at {}", dir.display()),
    }
}

/// Columns padded to their widest cell, numbers as they come.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

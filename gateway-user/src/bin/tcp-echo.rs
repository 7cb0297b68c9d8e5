//! tcp-echo: the server of Istio's tcp-echo sample, for demos and tests.
//!
//! It listens on every port given, answers each line it reads with
//! `PREFIX LINE`, and closes when the client closes. Like Istio's server
//! (samples/tcp-echo), an unterminated last line gets no answer.
use std::{net::IpAddr, process::ExitCode};

use clap::Parser;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// Answers each line with `PREFIX LINE`.
#[derive(Debug, Parser)]
#[command(name = "tcp-echo", version)]
struct Args {
    /// Ports to listen on, comma separated (e.g. 9000,9001,9002).
    #[arg(value_delimiter = ',', required = true)]
    ports: Vec<u16>,
    /// Word put before every line echoed (e.g. one).
    prefix: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
}

async fn serve(stream: TcpStream, prefix: String) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        let mut reply = Vec::with_capacity(prefix.len() + 1 + line.len());
        reply.extend_from_slice(prefix.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&line);
        w.write_all(&reply).await?;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut listeners = Vec::new();
    for port in &args.ports {
        match TcpListener::bind((args.address, *port)).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("error: cannot listen on {}:{port}: {e}", args.address);
                return ExitCode::FAILURE;
            }
        }
    }
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            eprintln!("listening on {addr}");
        }
        let prefix = args.prefix.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve(s, prefix.clone()));
                    }
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

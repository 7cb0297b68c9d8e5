//! The few socket system calls the data path needs that std and tokio do not
//! offer. Each wrapper returns `io::Result` and names nothing but its call.
use std::{io, mem, os::fd::AsRawFd, os::fd::BorrowedFd, os::fd::FromRawFd, os::fd::OwnedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed with it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn getsockopt<T: Default>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = T::default();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    })?;
    Ok((value, len as usize))
}

/// The head of `struct tcp_info` (include/uapi/linux/tcp.h) up to
/// `tcpi_bytes_received`, which every kernel since 4.1 fills.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct TcpInfo {
    pub state: u8,
    _u8: [u8; 7],
    _u32: [u32; 24],
    _pacing_rate: u64,
    _max_pacing_rate: u64,
    /// Bytes acknowledged by the peer (RFC 4898 tcpEStatsAppHCThruOctetsAcked).
    pub bytes_acked: u64,
    /// Bytes received, counting a received FIN as one.
    pub bytes_received: u64,
}

pub fn tcp_info(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    let (info, len) = getsockopt::<TcpInfo>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    if len < mem::size_of::<TcpInfo>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's tcp_info has no byte counters",
        ));
    }
    Ok(info)
}

/// Bytes in the send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
pub fn outq(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(n as u64)
}

/// The inode of the file `fd` is (a socket's, as `/proc/net/tcp` shows it).
pub fn inode(fd: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` lives for the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_ino)
}

/// Bytes in the receive queue not read yet (`SIOCINQ`).
pub fn inq(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n as u64)
}

/// The TCP sequence number of the next byte a reader of `fd` would get
/// (`copied_seq`): where the bytes already read end. Linux reports only
/// `rcv_nxt` (TCP_QUEUE_SEQ, in repair mode) and what is queued before it
/// (SIOCINQ); their difference, taken twice with no segment in between, is
/// it. Repair mode is held for three reads and left without the window
/// probe; it stops nothing this socket does meanwhile (the receive queue is
/// selected, so sends are not diverted, and nothing sends on a socket the
/// agent is moving). Needs CAP_NET_ADMIN; refuses a socket that has its
/// peer's FIN (the FIN takes a sequence number SIOCINQ does not count).
pub fn copied_seq(fd: &impl AsRawFd) -> io::Result<u32> {
    const TCP_REPAIR_ON: libc::c_int = 1;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    const TCP_RECV_QUEUE: libc::c_int = 1;
    // Leaving repair mode resets `sk_reuse`: an accepted socket that had
    // SO_REUSEADDR from its listener would then block a new listener on
    // the port while it lives. Put back as it was.
    let reuse = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?.0;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON)?;
    let seq = (|| {
        setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_QUEUE,
            TCP_RECV_QUEUE,
        )?;
        let rcv_nxt = || getsockopt::<u32>(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ).map(|v| v.0);
        for _ in 0..8 {
            let before = rcv_nxt()?;
            let queued = inq(fd)?;
            if rcv_nxt()? == before {
                return Ok(before.wrapping_sub(queued as u32));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "segments kept arriving",
        ))
    })();
    let off = setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        TCP_REPAIR_OFF_NO_WP,
    );
    let restored = setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    let seq = seq?;
    off?;
    restored?;
    let state = tcp_info(fd)?.state;
    // ESTABLISHED or FIN_WAIT1/2 (we sent a FIN; the peer has not): no FIN
    // received, so SIOCINQ counted every sequence number before rcv_nxt.
    if !matches!(state, 1 | 4 | 5) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the peer's FIN is in",
        ));
    }
    Ok(seq)
}

/// Every byte the socket has taken into its send queue since it was
/// established: acknowledged plus still queued. Unlike any counter of the
/// verdict's, this says the bytes are in the socket, not on the way to it.
pub fn written(fd: &impl AsRawFd) -> io::Result<u64> {
    // Acknowledged first, queue second: a byte acknowledged between the two
    // reads is then missed once (the caller looks again), never counted
    // twice, so the sum never runs ahead of what the socket took.
    let acked = tcp_info(fd)?.bytes_acked;
    Ok(acked + outq(fd)?)
}

/// [`written`] of a socket nobody is writing to, exactly: the queue is read
/// before and after the acknowledged count, and only a pair that agrees is
/// taken. With no writes the sum is fixed and acknowledgements only move
/// bytes from the queue to the count (both change together, under the
/// socket's lock), so an unchanged queue means the count read between was
/// taken with it. `None` if acknowledgements kept coming for every try.
pub fn written_settled(fd: &impl AsRawFd) -> io::Result<Option<u64>> {
    const TRIES: usize = 16;
    for _ in 0..TRIES {
        let before = outq(fd)?;
        let acked = tcp_info(fd)?.bytes_acked;
        if outq(fd)? == before {
            return Ok(Some(acked + before));
        }
    }
    Ok(None)
}

/// The socket's cookie: its key in every map.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    getsockopt::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE).map(|(c, _)| c)
}

/// Takes (and clears) the socket's pending error.
pub fn take_error(fd: &impl AsRawFd) -> io::Result<Option<io::Error>> {
    let (err, _) = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Makes the next `close` send a reset instead of a FIN.
pub fn set_linger_reset(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
}

/// Setting `SO_RCVLOWAT` runs the socket's data-ready path, which on a socket
/// in a sockmap makes the verdict process bytes that were queued before the
/// socket was inserted.
pub fn set_rcvlowat(fd: &impl AsRawFd, bytes: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// Sets the send buffer, beyond `wmem_max` (needs CAP_NET_ADMIN).
pub fn set_sndbuf_force(fd: &impl AsRawFd, bytes: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
}

pub fn shutdown_write(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// Non-blocking `recv` of at most `max` bytes into the spare capacity of
/// `buf` (no zeroing first); what arrives is appended.
pub fn recv_append(fd: &impl AsRawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = max.min(spare.len());
    let spare = &mut spare[..room];
    // SAFETY: the kernel writes at most `spare.len()` bytes into the spare
    // capacity, and `set_len` covers only what it reported writing.
    unsafe {
        let n = libc::recv(
            fd.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.set_len(buf.len() + n as usize);
        Ok(n as usize)
    }
}

/// Non-blocking `send` of `buf`, without SIGPIPE.
pub fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A pipe for splice(2): `(read end, write end)`, non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors, which we then own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe of `bytes` (`F_SETPIPE_SZ`); returns the size it got.
pub fn set_pipe_size(pipe: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    check(got)?;
    Ok(got as usize)
}

/// The process's effective capabilities (`CapEff` in /proc/self/status).
pub fn effective_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status"))
}

/// Non-blocking splice(2) of up to `len` bytes.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors we hold; no offsets.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Raises the open-files limit as far as the process may: with
/// CAP_SYS_RESOURCE up to the system's `fs.nr_open`, else to the hard limit.
/// Returns the new soft limit. A gateway holds two sockets per connection.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let wanted = nr_open.min(1 << 20);
    if wanted > lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: setrlimit reads one struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(wanted);
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one struct.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
pub fn raise_memlock_limit() -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one struct.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) }).map(drop)
}

/// Send buffer size and bytes queued in it (`SO_MEMINFO`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemInfo {
    pub sndbuf: u32,
    pub wmem_queued: u32,
}

pub fn meminfo(fd: &impl AsRawFd) -> io::Result<MemInfo> {
    // SK_MEMINFO_*: RMEM_ALLOC, RCVBUF, WMEM_ALLOC, SNDBUF, FWD_ALLOC,
    // WMEM_QUEUED, OPTMEM, BACKLOG, DROPS (include/uapi/linux/sock_diag.h).
    let (m, len) = getsockopt::<[u32; 9]>(fd, libc::SOL_SOCKET, libc::SO_MEMINFO)?;
    if len < 6 * 4 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "short SO_MEMINFO",
        ));
    }
    Ok(MemInfo {
        sndbuf: m[3],
        wmem_queued: m[5],
    })
}

/// Sets `SO_SNDBUF` to the size it has, which runs the socket's write-space
/// callback: on a socket in a sockmap, that schedules its psock worker.
pub fn kick_write_space(fd: &impl AsRawFd) -> io::Result<()> {
    // The kernel reports twice the value it was given (bookkeeping overhead).
    let (size, _) = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (size / 2).max(1))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// `copied_seq` moves by exactly what a reader takes, and leaves the
    /// socket's SO_REUSEADDR as it found it. Needs CAP_NET_ADMIN.
    #[test]
    fn copied_seq_follows_the_reads() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: repair mode needs CAP_NET_ADMIN");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        setsockopt(
            &server,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            1 as libc::c_int,
        )
        .expect("reuse");
        client.write_all(&[7u8; 5000]).expect("write");
        let mut buf = [0u8; 1234];
        server.read_exact(&mut buf).expect("read");
        let first = copied_seq(&server).expect("copied_seq");
        server.read_exact(&mut buf[..1000]).expect("read");
        let second = copied_seq(&server).expect("copied_seq");
        assert_eq!(second.wrapping_sub(first), 1000);
        let reuse = getsockopt::<libc::c_int>(&server, libc::SOL_SOCKET, libc::SO_REUSEADDR)
            .expect("getsockopt")
            .0;
        assert_eq!(reuse, 1, "SO_REUSEADDR not restored");
        // The socket still works both ways.
        server.write_all(b"ok").expect("server write");
        let mut two = [0u8; 2];
        client.read_exact(&mut two).expect("client read");
        assert_eq!(&two, b"ok");
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).expect("read the rest");
        assert_eq!(rest.len(), 5000 - 1234 - 1000);
        assert!(
            copied_seq(&server).is_err(),
            "a socket with its peer's FIN is refused"
        );
    }
}

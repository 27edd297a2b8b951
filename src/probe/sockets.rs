//! The target's listening TCP sockets and their accept queues. The queue length of a LISTEN socket is
//! its rx_queue in /proc/PID/net/tcp{,6}; the backlog is not in procfs, so it comes from sock_diag netlink
//! (what `ss -lnt` shows as Send-Q), falling back to net.core.somaxconn as an upper bound.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::{Observations, Probe, ProbeTarget, ReadErrorSink, ReadSource, TargetGone};

/// Where a socket's backlog figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogSource {
    /// The socket's own backlog, from sock_diag.
    Netlink,
    /// net.core.somaxconn: the most any backlog can be.
    Somaxconn,
}

/// One listening socket of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSocket {
    /// Local port.
    pub port: u16,
    /// Connections completed but not yet accepted.
    pub queue: u32,
    /// Backlog (maximum queue).
    pub backlog: u32,
    /// Where `backlog` came from.
    pub source: BacklogSource,
    /// Socket inode.
    pub inode: u64,
}

/// Socket inodes held by the target's fds (`socket:[N]` links in /proc/PID/fd).
pub fn socket_inodes(proc_root: &Path, pid: u32) -> std::io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(proc_root.join(pid.to_string()).join("fd"))?.flatten() {
        if let Ok(link) = std::fs::read_link(e.path()) {
            if let Some(n) = link
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
            {
                if let Ok(i) = n.parse() {
                    out.insert(i);
                }
            }
        }
    }
    Ok(out)
}

/// LISTEN sockets from a /proc/net/tcp{,6} table: (port, rx_queue, inode).
pub fn parse_proc_net_tcp(text: &str) -> Vec<(u16, u32, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let port = f[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let rx = f[4]
            .split(':')
            .nth(1)
            .and_then(|q| u32::from_str_radix(q, 16).ok());
        let inode = f[9].parse::<u64>().ok();
        if let (Some(port), Some(rx), Some(inode)) = (port, rx, inode) {
            out.push((port, rx, inode));
        }
    }
    out
}

/// One LISTEN socket in a sock_diag answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagListener {
    /// Local port.
    pub port: u16,
    /// Connections completed but not yet accepted (`idiag_rqueue`).
    pub queue: u32,
    /// Backlog (`idiag_wqueue` of a listening socket).
    pub backlog: u32,
    /// Socket inode.
    pub inode: u64,
}

/// Whether a sock_diag dump goes on after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpProgress {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE was seen: the dump is complete.
    Done,
}

/// A sock_diag answer that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SockDiagError {
    /// A message header claims more bytes than the datagram holds, or fewer than a header.
    #[error("sock_diag answer: message at byte {at} has length {len}, datagram has {total} bytes")]
    BadLength {
        /// Offset of the message in the datagram.
        at: usize,
        /// Its claimed length.
        len: usize,
        /// The datagram's length.
        total: usize,
    },
    /// The kernel answered NLMSG_ERROR with this errno.
    #[error("sock_diag answered error {0}")]
    Kernel(i32),
}

/// netlink message header length.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg` length.
const INET_DIAG_MSG: usize = 72;

fn u32_ne(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Parses one datagram of a sock_diag `SOCK_DIAG_BY_FAMILY` dump: appends the listeners it carries to
/// `out` and says whether the dump is complete. A pure function of the bytes, so any input gives a value
/// or an error.
pub fn parse_sock_diag_reply(
    datagram: &[u8],
    out: &mut Vec<DiagListener>,
) -> Result<DumpProgress, SockDiagError> {
    let total = datagram.len();
    let mut off = 0usize;
    while total - off >= NLMSG_HDR {
        let len = u32_ne(datagram, off) as usize;
        let ty = datagram
            .get(off + 4..off + 6)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u16::from_ne_bytes);
        if len < NLMSG_HDR || len > total - off {
            return Err(SockDiagError::BadLength {
                at: off,
                len,
                total,
            });
        }
        let payload = &datagram[off + NLMSG_HDR..off + len];
        match ty {
            NLMSG_DONE => return Ok(DumpProgress::Done),
            NLMSG_ERROR => {
                // struct nlmsgerr: a negative errno, then the request's header.
                let errno = payload
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                return Err(SockDiagError::Kernel(errno.saturating_neg()));
            }
            SOCK_DIAG_BY_FAMILY if payload.len() >= INET_DIAG_MSG => {
                // inet_diag_msg: family, state, timer, retrans, id{sport(be16) dport src[16] dst[16] if
                // cookie[8]}, expires, rqueue, wqueue, uid, inode.
                out.push(DiagListener {
                    port: u16::from_be_bytes([payload[4], payload[5]]),
                    queue: u32_ne(payload, 56),
                    backlog: u32_ne(payload, 60),
                    inode: u64::from(u32_ne(payload, 68)),
                });
            }
            _ => {}
        }
        // Messages are 4-byte aligned; the padding of the last one may be cut off.
        off += len.div_ceil(4) * 4;
        if off >= total {
            break;
        }
    }
    Ok(DumpProgress::More)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;

/// A sock_diag netlink socket kept open between ticks.
pub struct SockDiag {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
    /// Address families in which the target had listeners at the last full check.
    families: [bool; 2],
    checks: u64,
}

impl SockDiag {
    /// Opens the netlink socket.
    pub fn open() -> std::io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        Ok(SockDiag {
            fd,
            buf: vec![0u8; 32 * 1024],
            families: [true, true],
            checks: 0,
        })
    }

    /// LISTEN sockets of one address family.
    fn dump(&mut self, family: u8, out: &mut Vec<DiagListener>) -> std::io::Result<()> {
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        let mut req = [0u8; 72];
        req[0..4].copy_from_slice(&72u32.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[16] = family;
        req[17] = IPPROTO_TCP;
        req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
        sendto(raw, &req, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        // A dump ends with NLMSG_DONE; a bounded number of reads keeps a misbehaving kernel from looping us.
        for _ in 0..1024 {
            let n = recv(raw, &mut self.buf, MsgFlags::empty())?;
            let datagram = self.buf.get(..n).unwrap_or_default();
            match parse_sock_diag_reply(datagram, out) {
                Ok(DumpProgress::Done) => return Ok(()),
                Ok(DumpProgress::More) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
        Ok(())
    }

    /// The listeners among `inodes`. Every tenth call asks both address families; in between only the
    /// families the target listened in at the last full check.
    pub fn listeners(&mut self, inodes: &HashSet<u64>) -> std::io::Result<Vec<ListenSocket>> {
        let full = self.checks % 10 == 0;
        self.checks += 1;
        let mut out = Vec::new();
        let mut rows = Vec::new();
        for (i, family) in [libc_af::INET, libc_af::INET6].into_iter().enumerate() {
            if !(full || self.families[i]) {
                continue;
            }
            rows.clear();
            self.dump(family, &mut rows)?;
            let before = out.len();
            out.extend(
                rows.iter()
                    .filter(|r| inodes.contains(&r.inode))
                    .map(|r| ListenSocket {
                        port: r.port,
                        queue: r.queue,
                        backlog: r.backlog,
                        source: BacklogSource::Netlink,
                        inode: r.inode,
                    }),
            );
            if full {
                self.families[i] = out.len() > before;
            }
        }
        Ok(out)
    }
}

/// The target's listening sockets: from sock_diag when `diag` is available, else from
/// /proc/PID/net/tcp{,6} with somaxconn as the (upper-bound) backlog. `inodes` are the target's sockets.
pub fn listen_sockets(
    diag: Option<&mut SockDiag>,
    proc_root: &Path,
    pid: u32,
    inodes: &HashSet<u64>,
    somaxconn: u32,
) -> Vec<ListenSocket> {
    if let Some(d) = diag {
        if let Ok(found) = d.listeners(inodes) {
            return found;
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = proc_root.join(pid.to_string()).join("net").join(table);
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (port, queue, inode) in parse_proc_net_tcp(&text) {
            if inodes.contains(&inode) {
                out.push(ListenSocket {
                    port,
                    queue,
                    backlog: somaxconn,
                    source: BacklogSource::Somaxconn,
                    inode,
                });
            }
        }
    }
    out
}

/// Ticks between scans of the target's fds for socket inodes.
const INODE_SCAN_EVERY_TICKS: u64 = 10;

/// The listen-socket probe: finds the target's sockets (every tenth tick) and reads their accept queues
/// every tick, through sock_diag where netlink is allowed.
pub struct SocketProbe {
    proc_root: PathBuf,
    /// net.core.somaxconn, the backlog's upper bound when netlink is not allowed.
    somaxconn: u32,
    /// Kept open; None where netlink is not allowed (then procfs and somaxconn are used).
    sock_diag: Option<SockDiag>,
    /// The attached target's pid.
    pid: Option<u32>,
    /// Socket inodes of the target at the last scan.
    inodes: HashSet<u64>,
    ticks: u64,
}

impl SocketProbe {
    /// A probe reading under `proc_root`; opens the sock_diag socket once.
    pub fn new(proc_root: &Path) -> Self {
        SocketProbe {
            proc_root: proc_root.to_path_buf(),
            somaxconn: somaxconn(proc_root),
            sock_diag: SockDiag::open().ok(),
            pid: None,
            inodes: HashSet::new(),
            ticks: 0,
        }
    }
}

impl Probe for SocketProbe {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn attach(&mut self, target: &ProbeTarget, _errors: &dyn ReadErrorSink) -> std::io::Result<()> {
        self.pid = Some(target.pid);
        self.inodes.clear();
        self.ticks = 0;
        Ok(())
    }

    fn program_changed(&mut self, target: &ProbeTarget) {
        // exec() closed the close-on-exec sockets and the new program opens its own, or another process of
        // the tree runs the program (node under `npm start`): scan its fds at the next tick.
        self.pid = Some(target.pid);
        self.ticks = 0;
    }

    fn sample(
        &mut self,
        obs: &mut Observations,
        errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone> {
        let Some(pid) = self.pid else {
            return Ok(());
        };
        let scan = self.ticks % INODE_SCAN_EVERY_TICKS == 0;
        self.ticks = self.ticks.wrapping_add(1);
        if scan {
            match socket_inodes(&self.proc_root, pid) {
                Ok(i) => self.inodes = i,
                Err(_) => errors.read_error(ReadSource::ProcFd),
            }
        }
        if !self.inodes.is_empty() {
            obs.listen = listen_sockets(
                self.sock_diag.as_mut(),
                &self.proc_root,
                pid,
                &self.inodes,
                self.somaxconn,
            );
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.pid = None;
        self.inodes.clear();
    }
}

mod libc_af {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

/// net.core.somaxconn.
pub fn somaxconn(proc_root: &Path) -> u32 {
    std::fs::read_to_string(proc_root.join("sys/net/core/somaxconn"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listen_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000  1000        0 43210 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 43299 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_proc_net_tcp(text), vec![(8080, 3, 43210)]);
        assert!(parse_proc_net_tcp("garbage\nmore garbage").is_empty());
    }

    /// One netlink message: header (length, type, flags, seq, pid) and payload, padded to 4 bytes.
    fn message(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(payload);
        m.resize(len.div_ceil(4) * 4, 0);
        m
    }

    fn listener(port: u16, queue: u32, backlog: u32, inode: u32) -> Vec<u8> {
        let mut p = vec![0u8; INET_DIAG_MSG];
        p[0] = libc_af::INET;
        p[1] = TCP_LISTEN as u8;
        p[4..6].copy_from_slice(&port.to_be_bytes());
        p[56..60].copy_from_slice(&queue.to_ne_bytes());
        p[60..64].copy_from_slice(&backlog.to_ne_bytes());
        p[68..72].copy_from_slice(&inode.to_ne_bytes());
        p
    }

    #[test]
    fn sock_diag_reply_listeners_done_error_and_bad_lengths() {
        let mut d = message(SOCK_DIAG_BY_FAMILY, &listener(8080, 3, 128, 43210));
        d.extend(message(SOCK_DIAG_BY_FAMILY, &listener(9090, 0, 4096, 7)));
        let mut out = Vec::new();
        assert_eq!(parse_sock_diag_reply(&d, &mut out), Ok(DumpProgress::More));
        assert_eq!(
            out,
            [
                DiagListener {
                    port: 8080,
                    queue: 3,
                    backlog: 128,
                    inode: 43210
                },
                DiagListener {
                    port: 9090,
                    queue: 0,
                    backlog: 4096,
                    inode: 7
                }
            ]
        );
        out.clear();
        d.extend(message(NLMSG_DONE, &[0; 4]));
        d.extend(message(SOCK_DIAG_BY_FAMILY, &listener(1, 1, 1, 1)));
        assert_eq!(parse_sock_diag_reply(&d, &mut out), Ok(DumpProgress::Done));
        assert_eq!(out.len(), 2, "nothing after NLMSG_DONE is read");

        let err = message(NLMSG_ERROR, &(-13i32).to_ne_bytes());
        assert_eq!(
            parse_sock_diag_reply(&err, &mut out),
            Err(SockDiagError::Kernel(13))
        );
        // A header that claims more than the datagram holds, or less than a header.
        let mut long = message(SOCK_DIAG_BY_FAMILY, &listener(1, 1, 1, 1));
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            parse_sock_diag_reply(&long, &mut out),
            Err(SockDiagError::BadLength { len: 1000, .. })
        ));
        long[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_sock_diag_reply(&long, &mut out).is_err());
        long[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_sock_diag_reply(&long, &mut out).is_err());
        // A payload too short for inet_diag_msg is skipped; a trailing partial header is ignored.
        out.clear();
        let mut short = message(SOCK_DIAG_BY_FAMILY, &[0; 8]);
        short.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            parse_sock_diag_reply(&short, &mut out),
            Ok(DumpProgress::More)
        );
        assert!(out.is_empty());
        assert_eq!(parse_sock_diag_reply(&[], &mut out), Ok(DumpProgress::More));
    }

    #[test]
    fn own_listener_backlog_from_netlink() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inodes = socket_inodes(Path::new("/proc"), std::process::id()).unwrap();
        let mut diag = SockDiag::open().unwrap();
        let found = listen_sockets(
            Some(&mut diag),
            Path::new("/proc"),
            std::process::id(),
            &inodes,
            4096,
        );
        let s = found.iter().find(|s| s.port == port).expect("own listener");
        assert_eq!(s.queue, 0);
        assert_eq!(s.source, BacklogSource::Netlink);
        // std's TcpListener asks for a backlog of 128 (capped by somaxconn).
        assert_eq!(s.backlog, 128.min(somaxconn(Path::new("/proc"))));
        // Between full checks only the family with listeners is asked; the answer is the same.
        let again = listen_sockets(
            Some(&mut diag),
            Path::new("/proc"),
            std::process::id(),
            &inodes,
            4096,
        );
        assert!(again.iter().any(|s| s.port == port));
        // Without netlink: procfs, and somaxconn as the upper bound.
        let fallback = listen_sockets(None, Path::new("/proc"), std::process::id(), &inodes, 4096);
        let s = fallback
            .iter()
            .find(|s| s.port == port)
            .expect("own listener from procfs");
        assert_eq!(
            (s.queue, s.backlog, s.source),
            (0, 4096, BacklogSource::Somaxconn)
        );
    }
}

//! The target's listening TCP sockets and their accept queues. The queue length of a LISTEN socket is
//! its rx_queue in /proc/PID/net/tcp{,6}; the backlog is not in procfs, so it comes from sock_diag netlink
//! (what `ss -lnt` shows as Send-Q), falling back to net.core.somaxconn as an upper bound.

use std::collections::HashSet;
use std::path::Path;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

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

    /// LISTEN sockets of one address family: (port, rqueue, backlog, inode).
    fn dump(&mut self, family: u8, out: &mut Vec<(u16, u32, u32, u64)>) -> std::io::Result<()> {
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
        let buf = &mut self.buf;
        // A dump ends with NLMSG_DONE; a bounded number of reads keeps a misbehaving kernel from looping us.
        for _ in 0..1024 {
            let n = recv(raw, buf, MsgFlags::empty())?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or([0; 2]));
                if len < 16 || off + len > n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return Err(std::io::Error::other("sock_diag answered an error"))
                    }
                    SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                        let m = &buf[off + 16..off + len];
                        // inet_diag_msg: family, state, timer, retrans, id{sport(be16) dport src[16] dst[16] if
                        // cookie[8]}, expires, rqueue, wqueue, uid, inode.
                        let port = u16::from_be_bytes([m[4], m[5]]);
                        let word = |at: usize| {
                            u32::from_ne_bytes(m[at..at + 4].try_into().unwrap_or([0; 4]))
                        };
                        out.push((port, word(56), word(60), word(68) as u64));
                    }
                    _ => {}
                }
                off += len.div_ceil(4) * 4;
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
            out.extend(rows.iter().filter(|r| inodes.contains(&r.3)).map(
                |&(port, queue, backlog, inode)| ListenSocket {
                    port,
                    queue,
                    backlog,
                    source: BacklogSource::Netlink,
                    inode,
                },
            ));
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

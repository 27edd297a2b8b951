//! Asks a running HotSpot JVM to write its perf map (`/tmp/perf-PID.map`, the names of its JIT-compiled
//! methods) through the JVM's attach protocol, the one `jcmd` speaks: no JDK tool in the sidecar.
//!
//! The protocol (HotSpot on Linux): the JVM listens on the Unix socket `/tmp/.java_pidNSPID` once asked;
//! it is asked by creating `.attach_pidNSPID` in its working directory or `/tmp` and sending SIGQUIT. A
//! request is protocol version `1`, the command and three arguments, each NUL-terminated; the answer is
//! a status line (`0` for success) and the command's output. Everything is reached through
//! `/proc/PID/root`, so a JVM in another mount namespace is asked in its own `/tmp`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::maps::namespace_pid;

/// How long the JVM gets to open its attach socket after SIGQUIT.
const ATTACH_WAIT: Duration = Duration::from_secs(5);
/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong asking a JVM.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The process does not handle SIGQUIT (not a JVM yet, or started with -Xrs): sending it would kill
    /// the process, so vitals does not.
    #[error(
        "pid {0} does not catch SIGQUIT (not a HotSpot JVM, or started with -Xrs); not attaching"
    )]
    NoQuitHandler(u32),
    /// The socket did not appear.
    #[error("the JVM (pid {0}) did not open its attach socket within {ATTACH_WAIT:?}")]
    NoSocket(u32),
    /// Reading or writing failed.
    #[error("JVM attach to pid {pid} at {path}: {source}")]
    Io {
        /// The JVM.
        pid: u32,
        /// The file or socket.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The JVM answered with an error status.
    #[error("the JVM (pid {pid}) refused {command}: {answer}")]
    Refused {
        /// The JVM.
        pid: u32,
        /// The command.
        command: String,
        /// Its answer.
        answer: String,
    },
}

/// Whether the process is a HotSpot JVM (its memory maps libjvm.so).
pub fn is_jvm(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps"))
        .is_ok_and(|m| m.contains("/libjvm.so"))
}

/// Whether the process has a handler for SIGQUIT (bit 3 of `SigCgt`).
fn catches_sigquit(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGQUIT - 1)) != 0)
}

/// Runs `jcmd`-style `command` (e.g. `Compiler.perfmap`) in the JVM `pid`; returns its output.
pub fn jcmd(proc_root: &Path, pid: u32, command: &str) -> Result<String, AttachError> {
    let nspid = namespace_pid(proc_root, pid);
    let tmp = proc_root.join(pid.to_string()).join("root/tmp");
    let socket = tmp.join(format!(".java_pid{nspid}"));
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(_) => {
            start_listener(proc_root, pid, nspid, &tmp, &socket)?;
            UnixStream::connect(&socket).map_err(|source| AttachError::Io {
                pid,
                path: socket.clone(),
                source,
            })?
        }
    };
    let io = |source| AttachError::Io {
        pid,
        path: socket.clone(),
        source,
    };
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(COMMAND_TIMEOUT))
        .map_err(io)?;
    let mut request = Vec::new();
    for part in ["1", "jcmd", command, "", ""] {
        request.extend_from_slice(part.as_bytes());
        request.push(0);
    }
    stream.write_all(&request).map_err(io)?;
    let mut answer = Vec::new();
    stream.take(1 << 20).read_to_end(&mut answer).map_err(io)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (status, rest) = answer.split_once('\n').unwrap_or((&answer, ""));
    if status.trim() != "0" {
        return Err(AttachError::Refused {
            pid,
            command: command.to_owned(),
            answer: answer.trim().to_owned(),
        });
    }
    Ok(rest.to_owned())
}

/// Asks the JVM to open its attach socket: the trigger file, then SIGQUIT, then a wait for the socket.
fn start_listener(
    proc_root: &Path,
    pid: u32,
    nspid: u32,
    tmp: &Path,
    socket: &Path,
) -> Result<(), AttachError> {
    if !catches_sigquit(proc_root, pid) {
        return Err(AttachError::NoQuitHandler(pid));
    }
    let trigger = tmp.join(format!(".attach_pid{nspid}"));
    std::fs::write(&trigger, b"").map_err(|source| AttachError::Io {
        pid,
        path: trigger.clone(),
        source,
    })?;
    // The JVM only honours a trigger owned by its own user.
    if let Some((uid, gid)) = owner(proc_root, pid) {
        let _ = std::os::unix::fs::chown(&trigger, Some(uid), Some(gid));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGQUIT,
    );
    let started = Instant::now();
    let mut found = false;
    while started.elapsed() < ATTACH_WAIT {
        if socket.exists() {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&trigger);
    if found {
        Ok(())
    } else {
        Err(AttachError::NoSocket(pid))
    }
}

/// The process's effective uid and gid.
fn owner(proc_root: &Path, pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

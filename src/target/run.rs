//! `vitals run -- CMD ARGS…`: spawn the target as a child whose OpenTelemetry SDK exports to vitals' own
//! receiver, forward signals to it, and exit with its status, like `env` or `timeout --foreground`.
//!
//! In a terminal the child stays in vitals' process group, which is the terminal's foreground group: it
//! can read the terminal, and Ctrl-C, Ctrl-\\, Ctrl-Z and window-size changes reach it directly, as if it
//! had been started without vitals. Without a terminal it gets its own process group and vitals forwards
//! what it receives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitStatus;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use std::path::Path;

use crate::config::OtlpProtocol;
use crate::probe::procfs::{list_pids, parse_stat, read_comm};

/// An address a local client can reach: an unspecified bind address becomes loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// The `OTEL_EXPORTER_OTLP_*` variables that point an SDK at vitals' receivers. The per-signal variables
/// are set too, because an app may have set them and they take precedence over the general one.
pub fn otlp_env(
    grpc: SocketAddr,
    http: SocketAddr,
    protocol: OtlpProtocol,
) -> Vec<(String, String)> {
    let (grpc, http) = (reachable(grpc), reachable(http));
    let mut env = Vec::new();
    match protocol {
        OtlpProtocol::HttpProtobuf => {
            let base = format!("http://{http}");
            env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.name().into()));
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), base.clone()));
            for (signal, path) in [
                ("TRACES", "traces"),
                ("METRICS", "metrics"),
                ("LOGS", "logs"),
            ] {
                env.push((
                    format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"),
                    protocol.name().into(),
                ));
                env.push((
                    format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
                    format!("{base}/v1/{path}"),
                ));
            }
        }
        OtlpProtocol::Grpc => {
            let base = format!("http://{grpc}");
            env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.name().into()));
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), base.clone()));
            for signal in ["TRACES", "METRICS", "LOGS"] {
                env.push((
                    format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"),
                    protocol.name().into(),
                ));
                env.push((
                    format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
                    base.clone(),
                ));
            }
        }
    }
    env.push(("OTEL_EXPORTER_OTLP_INSECURE".into(), "true".into()));
    env
}

/// Exit code when the command does not exist (as `env`, `timeout` and shells use).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

/// The child could not be started.
#[derive(Debug, thiserror::Error)]
#[error("vitals run: cannot start {program:?}: {reason}")]
pub struct SpawnError {
    /// The command as given.
    pub program: String,
    /// What went wrong and what to do.
    pub reason: String,
    /// The exit code vitals reports: 127 not found, 126 not executable, 1 otherwise.
    pub exit_code: i32,
}

/// The open-file limit vitals was started with, when it raised its own: the child gets it back, so a
/// program that relies on the usual soft limit (select() cannot take descriptors past 1024) runs as it
/// would without vitals.
static CHILD_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Remembers the open-file limit (soft, hard) to give the child; called before vitals raises its own.
pub fn keep_child_nofile(soft: u64, hard: u64) {
    let _ = CHILD_NOFILE.set((soft, hard));
}

/// Whether the child shares vitals' terminal: stdin is a terminal, so the child must stay in the
/// terminal's foreground process group to read it and to receive its signals.
pub fn in_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// Spawns `command` with `env` added. With `terminal` the child stays in vitals' process group (see the
/// module documentation); otherwise it gets its own, so a signal vitals forwards reaches it once.
pub fn spawn(
    command: &[String],
    env: &[(String, String)],
    terminal: bool,
) -> Result<tokio::process::Child, SpawnError> {
    let Some((prog, args)) = command.split_first() else {
        return Err(SpawnError {
            program: String::new(),
            reason: "no command after `--`".into(),
            exit_code: 2,
        });
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(false);
    if !terminal {
        cmd.process_group(0);
    }
    if let Some(&(soft, hard)) = CHILD_NOFILE.get() {
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; setrlimit is one, and
        // the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    cmd.spawn().map_err(|e| {
        let (exit_code, reason) = match (e.kind(), e.raw_os_error()) {
            (std::io::ErrorKind::NotFound, _) => {
                (EXIT_NOT_FOUND, format!("{e}; check the name and PATH"))
            }
            (std::io::ErrorKind::PermissionDenied, _) => (
                EXIT_NOT_EXECUTABLE,
                format!("{e}; is it executable (chmod +x) and on a filesystem mounted with exec?"),
            ),
            (_, Some(code)) if code == nix::errno::Errno::ENOEXEC as i32 => (
                EXIT_NOT_EXECUTABLE,
                format!("{e}; a script needs a #! line"),
            ),
            _ => (1, e.to_string()),
        };
        SpawnError {
            program: prog.clone(),
            reason,
            exit_code,
        }
    })
}

/// Sends `signal` to the child and logs it; a child that already exited is not an error. Without a
/// terminal the child leads its own process group and the signal goes to the whole group, as GNU `timeout`
/// does without `--foreground`: `npm start`'s node, a shell's children and a pre-fork server's workers get it
/// too, so nothing is left running. In a terminal the child shares vitals' group (the terminal's), and the
/// signal goes to the child alone, as with `timeout --foreground`.
pub fn forward(pid: u32, signal: Signal, to_group: bool) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let (to, whom) = if to_group {
        (Pid::from_raw(-raw), "the child's process group")
    } else {
        (Pid::from_raw(raw), "the child")
    };
    match kill(to, signal) {
        Ok(()) => tracing::info!(
            pid,
            signal = signal.as_str(),
            "forwarded signal to {whom}; vitals exits when the child does, with its status"
        ),
        Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pid, signal = signal.as_str(), error = %e, "could not forward signal to {whom}")
        }
    }
}

/// Processes the child started that are still running after it exited: members of `pgrp` (the child's own
/// group, or vitals' in a terminal) that started no earlier than the child, other than vitals. They were
/// reparented when the child exited, so the group and the start time are what is left to know them by.
pub fn leftovers(proc_root: &Path, pgrp: u32, child_start_ticks: u64) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut pids = Vec::new();
    if list_pids(proc_root, &mut pids).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pid in pids {
        if pid == me {
            continue;
        }
        let Some(st) = std::fs::read(proc_root.join(pid.to_string()).join("stat"))
            .ok()
            .and_then(|raw| parse_stat(&raw).ok())
        else {
            continue;
        };
        if st.pgrp == pgrp && st.starttime >= child_start_ticks && st.group_alive() {
            let comm = read_comm(proc_root, pid).unwrap_or_default();
            out.push((pid, comm));
        }
        if out.len() >= 32 {
            break;
        }
    }
    out
}

/// The exit code a shell would report: the child's code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Why the child ended, for the log: `exit code N`, or `killed by SIGNAME` (with a hint for SIGKILL, the
/// OOM killer's signal; `vitals_cgroup_memory_oom_kills_total` says whether it was an OOM kill).
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => {
            let name =
                Signal::try_from(s).map_or_else(|_| format!("signal {s}"), |g| g.to_string());
            if s == Signal::SIGKILL as i32 {
                format!("killed by {name} (the OOM killer's signal, or a kill -9)")
            } else {
                format!("killed by {name}")
            }
        }
        (None, None) => "ended with an unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions_name_the_code_or_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert!(describe_exit(ExitStatus::from_raw(9)).starts_with("killed by SIGKILL"));
        assert_eq!(describe_exit(ExitStatus::from_raw(15)), "killed by SIGTERM");
    }

    #[test]
    fn http_env_points_at_receiver_paths() {
        let env = otlp_env(
            "0.0.0.0:4317".parse().unwrap(),
            "127.0.0.1:14318".parse().unwrap(),
            OtlpProtocol::HttpProtobuf,
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://127.0.0.1:14318")
        );
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            Some("http://127.0.0.1:14318/v1/traces")
        );
        assert_eq!(get("OTEL_EXPORTER_OTLP_PROTOCOL"), Some("http/protobuf"));
    }

    #[test]
    fn grpc_env_uses_loopback_for_unspecified_bind() {
        let env = otlp_env(
            "0.0.0.0:4317".parse().unwrap(),
            "127.0.0.1:4318".parse().unwrap(),
            OtlpProtocol::Grpc,
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            Some("http://127.0.0.1:4317")
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}

//! Which of the target's ptrace-protected `/proc` files vitals may read, and why not: reading another
//! user's `io`, `fd` listing and `root` needs the same uid or CAP_SYS_PTRACE. Checked once per attach so
//! the log says what is missing instead of leaving counters to hint at it.

use std::io::ErrorKind;
use std::path::Path;

use crate::probe::procfs::effective_uid_in;

/// A protected file, what vitals loses without it.
const PROTECTED: [(&str, &str); 3] = [
    ("io", "disk I/O (process_disk_io_bytes_total on /metrics)"),
    (
        "fd",
        "the fd listing, so listening sockets and accept_queue pools (the fd count still works: it is the directory's size)",
    ),
    (
        "root",
        "the target's own view of its cgroup and /tmp, so JVM hsperfdata and, in a container, its cgroup",
    ),
];

/// One sentence naming the files vitals may not read and why, or None when everything is readable.
pub fn denied_report(proc_root: &Path, pid: u32) -> Option<String> {
    let dir = proc_root.join(pid.to_string());
    let denied: Vec<(&str, &str)> = PROTECTED
        .iter()
        .copied()
        .filter(|(file, _)| {
            let path = dir.join(file);
            let result = match *file {
                "io" => std::fs::read(&path).map(|_| ()),
                _ => std::fs::read_dir(&path).map(|_| ()),
            };
            matches!(result, Err(e) if e.kind() == ErrorKind::PermissionDenied)
        })
        .collect();
    if denied.is_empty() {
        return None;
    }
    let target_uid = uid_text(effective_uid_in(&dir.join("status")));
    // vitals' own effective uid, the one the kernel's ptrace access check compares.
    let own_uid = uid_text(effective_uid_in(Path::new("/proc/self/status")));
    let files: Vec<String> = denied
        .iter()
        .map(|(f, _)| format!("/proc/{pid}/{f}"))
        .collect();
    let lost: Vec<&str> = denied.iter().map(|(_, l)| *l).collect();
    Some(format!(
        "cannot read {} (permission denied): vitals runs as uid {own_uid}, the target as uid {target_uid}; \
         run vitals as the target's uid or grant CAP_SYS_PTRACE (deploy/kubernetes/overlays/sys-ptrace). \
         Left out until then: {}. Each failed read counts in vitals_exporter_read_errors_total",
        files.join(", "),
        lost.join("; ")
    ))
}

/// A uid for the log, `?` when it could not be read.
fn uid_text(uid: Option<u32>) -> String {
    uid.map_or_else(|| "?".to_owned(), |u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_fully_readable() {
        assert_eq!(denied_report(Path::new("/proc"), std::process::id()), None);
    }
}

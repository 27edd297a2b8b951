//! Gives back the code pages that only start-up used.
//!
//! Why: the kernel maps a program's code in 64 KiB runs around each page it first executes, and nothing
//! ever unmaps them. Start-up runs code the steady state never runs again (flag and config parsing, the
//! logger's set-up, binding, the first target search), scattered over the binary, so about 8 of an idle
//! sidecar's 11 MiB of RSS were the binary's own pages, most of them not used again. Once started, vitals
//! drops its mappings of never-written code and read-only data (`MADV_DONTNEED`): its own, libc's, the
//! loader's. What the steady state runs is mapped again from the page cache on its next use, a minor fault
//! and no disk read; what it never runs stays out of its RSS and becomes clean page cache the kernel may
//! reclaim.
//!
//! Only read-only file mappings with no private (copied-on-write) page are dropped: the relocated
//! read-only data and every writable segment hold private contents that dropping would lose.

/// A file mapping that can be dropped: start and length in bytes.
#[derive(Debug, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// The file mappings in the text of a `/proc/PID/smaps` that are read-only (`r-xp` or `r--p`) and hold
/// no private page (`Anonymous: 0 kB`): their every resident page is the file's.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut out = Vec::new();
    let mut current: Option<Droppable> = None;
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            let kib = anon.trim().trim_end_matches("kB").trim();
            if let Some(d) = current.take() {
                if kib == "0" {
                    out.push(d);
                }
            }
            continue;
        }
        // A mapping's header: "start-end perms offset dev inode path".
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // A file's path starts with '/'; "[vdso]", "[stack]" and anonymous mappings do not.
        let path = fields.nth(3).unwrap_or("");
        current = (matches!(perms, "r-xp" | "r--p") && path.starts_with('/') && end > start)
            .then_some(Droppable {
                start,
                len: end - start,
            });
    }
    out
}

/// Drops this process's read-only file mappings that hold no private page (code and read-only data of the
/// executable and its libraries); returns the bytes of address space dropped. Linux only; elsewhere (or when `/proc/self` is unreadable) it drops
/// nothing.
pub fn release() -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut dropped = 0;
        for d in droppable(&smaps) {
            // SAFETY: the range is one whole read-only file mapping with no private page; MADV_DONTNEED on a private file mapping only removes page-table entries, and the next
            // access maps the same file contents again.
            let r =
                unsafe { libc::madvise(d.start as *mut libc::c_void, d.len, libc::MADV_DONTNEED) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            dropped += d.len;
        }
        Ok(dropped)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d1ebbfb000-55d1ebf1e000 r--p 00000000 fd:00 123 /opt/vitals
Size:               3212 kB
Rss:                1216 kB
Anonymous:             0 kB
55d1ebf1e000-55d1ec85c000 r-xp 00322000 fd:00 123 /opt/vitals
Size:               9464 kB
Anonymous:             0 kB
55d1ec85c000-55d1ec8d6000 r--p 00c5f000 fd:00 123 /opt/vitals
Size:                488 kB
Anonymous:           488 kB
55d1ec8d6000-55d1ec8e0000 rw-p 00cd9000 fd:00 123 /opt/vitals
Anonymous:            40 kB
7f5a098d3000-7f5a09a29000 r-xp 00026000 fd:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f5a04000000-7f5a04040000 rw-p 00000000 00:00 0
Anonymous:           252 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages_are_dropped() {
        let d = droppable(SMAPS);
        assert_eq!(
            d,
            vec![
                Droppable {
                    start: 0x55d1ebbfb000,
                    len: 0x55d1ebf1e000 - 0x55d1ebbfb000
                },
                Droppable {
                    start: 0x55d1ebf1e000,
                    len: 0x55d1ec85c000 - 0x55d1ebf1e000
                },
                Droppable {
                    start: 0x7f5a098d3000,
                    len: 0x7f5a09a29000 - 0x7f5a098d3000
                },
            ]
        );
        // Relocated read-only data (written at load, so with private pages), writable segments and
        // anonymous memory are kept.
        assert!(d
            .iter()
            .all(|m| m.start != 0x55d1ec85c000 && m.start != 0x55d1ec8d6000));
        assert!(d.iter().all(|m| m.start != 0x7f5a04000000));
    }

    #[test]
    fn a_mapping_whose_anonymous_line_is_missing_or_garbled_is_kept() {
        let text = "\
7f0000000000-7f0000001000 r-xp 00000000 fd:00 9 /lib/x.so
Size:                  4 kB
7f0000002000-7f0000003000 r--p 00000000 fd:00 9 /lib/y.so
Anonymous:          many kB
";
        assert!(droppable(text).is_empty());
    }

    #[test]
    fn this_process_keeps_running_after_its_code_is_dropped() {
        // The test binary's own code and read-only data are dropped while its threads run; everything
        // they touch after is mapped again from the file.
        let dropped = release().expect("own smaps readable");
        assert!(dropped > 0, "the test binary has read-only mappings");
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
        // The dropped mappings stay mapped (only their page-table entries went), so they are listed still.
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("own smaps");
        assert!(!droppable(&smaps).is_empty());
    }
}

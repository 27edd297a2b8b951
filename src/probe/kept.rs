//! A procfs or cgroupfs file kept open and re-read from offset 0 each tick, saving the open/close pair.
//!
//! Every file read this way is one the kernel writes with a single show call: `/proc/PID/{stat,status,io,
//! limits,schedstat,comm}`, `/proc/loadavg`, a cgroup's interface files. The first read of such a file
//! returns all of it when the buffer is large enough, so a read that returns less than was asked is its
//! end, and the read of 0 bytes that would say so is not made (one system call per file and reading).
//! Files the kernel writes a record at a time (`maps`, `smaps`, `cgroup.procs`) may come in page-sized
//! parts; they are read with [`read_whole`], which reads to the zero-byte end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An open pseudo-file that is re-read in place. Reading at offset 0 makes seq_file and kernfs regenerate
/// the content, so the value is as fresh as a new open.
#[derive(Debug)]
pub struct KeptFile {
    file: File,
    path: PathBuf,
}

/// Upper bound on what one pseudo-file may hold; a larger one is cut, never grown without limit.
pub const MAX_PSEUDO_FILE: usize = 64 * 1024;

impl KeptFile {
    /// Opens `path` for repeated reading.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        Ok(KeptFile {
            file: File::open(&path)?,
            path,
        })
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole content into `buf` (its old content overwritten) and returns it: a read shorter than asked ends
    /// it (see the module's note). Keeps `buf`'s capacity so a steady tick allocates nothing.
    pub fn read<'a>(&self, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        fill(buf, true, |b, off| self.file.read_at(b, off))
    }
}

/// Opens `path`, reads it to its zero-byte end into `buf` (its old content overwritten, at most about
/// [`MAX_PSEUDO_FILE`]) and closes it: one open, the reads, one close, and no size query first (a
/// pseudo-file's size says nothing).
pub fn read_whole<'a>(path: &Path, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    let file = File::open(path)?;
    fill(buf, false, |b, off| file.read_at(b, off))
}

/// Reads into `buf` through `read_at` from offset 0 until a read of 0 bytes, or (when `short_ends`) one
/// shorter than asked, or until about [`MAX_PSEUDO_FILE`] bytes are held, and returns what was read.
/// `buf` stays initialised to its full length between calls: only its growth is zeroed, once, not every
/// read (zeroing a 4 KiB buffer before each read was a sixth of the sampler's instructions).
fn fill(
    buf: &mut Vec<u8>,
    short_ends: bool,
    read_at: impl Fn(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<&[u8]> {
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    let mut off = 0usize;
    loop {
        if off == buf.len() {
            if off >= MAX_PSEUDO_FILE {
                break;
            }
            buf.resize(off * 2, 0);
        }
        let spare = buf.len() - off;
        let n = read_at(&mut buf[off..], off as u64)?;
        off += n;
        if n == 0 || (short_ends && n < spare) {
            break;
        }
    }
    Ok(&buf[..off])
}

/// True when an I/O error means the process (or cgroup) is gone rather than unreadable.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::ESRCH) | Some(libc_errno::ENOENT) | Some(libc_errno::ENODEV)
    )
}

mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENODEV: i32 = 19;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rereads_from_start_and_reuses_buffer() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello").unwrap();
        let k = KeptFile::open(f.path()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(k.read(&mut buf).unwrap(), b"hello");
        let cap = buf.capacity();
        assert_eq!(k.read(&mut buf).unwrap(), b"hello");
        assert_eq!(buf.capacity(), cap);
    }

    /// The buffer keeps its old bytes past what a read returns: a shorter content read after a longer
    /// one (a file that shrank, or another file through the same buffer) is returned alone.
    #[test]
    fn a_shorter_read_returns_only_its_own_bytes() {
        let mut long = tempfile::NamedTempFile::new().unwrap();
        long.write_all(&vec![b'x'; 6000]).unwrap();
        let mut short = tempfile::NamedTempFile::new().unwrap();
        short.write_all(b"hi\n").unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            KeptFile::open(long.path())
                .unwrap()
                .read(&mut buf)
                .unwrap()
                .len(),
            6000
        );
        assert_eq!(
            KeptFile::open(short.path())
                .unwrap()
                .read(&mut buf)
                .unwrap(),
            b"hi\n"
        );
        assert_eq!(read_whole(short.path(), &mut buf).unwrap(), b"hi\n");
        let k = KeptFile::open(long.path()).unwrap();
        long.as_file().set_len(0).unwrap();
        assert_eq!(k.read(&mut buf).unwrap(), b"");
    }

    #[test]
    fn large_file_is_bounded() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![b'x'; MAX_PSEUDO_FILE * 3]).unwrap();
        let k = KeptFile::open(f.path()).unwrap();
        let mut buf = Vec::new();
        let n = k.read(&mut buf).unwrap().len();
        assert!(
            (MAX_PSEUDO_FILE..MAX_PSEUDO_FILE * 2).contains(&n),
            "read {n}"
        );
    }

    /// Reading every kind of file vitals keeps open stops at the first short read and still holds what
    /// reading to the zero-byte end gets: the same number of lines, ending in a newline (values may change
    /// between the two reads, so the bytes are not compared).
    #[test]
    fn a_short_read_is_the_end_of_every_kept_kind() {
        let pid = std::process::id();
        let mut paths: Vec<PathBuf> = ["stat", "status", "io", "limits", "schedstat", "comm"]
            .iter()
            .map(|f| PathBuf::from(format!("/proc/{pid}/{f}")))
            .collect();
        paths.push("/proc/loadavg".into());
        for r in ["cpu", "memory", "io"] {
            paths.push(PathBuf::from(format!("/proc/pressure/{r}")));
        }
        // The cgroup interface files this machine has (v2 or v1), whichever are readable.
        for dir in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpu",
        ] {
            for f in [
                "memory.current",
                "memory.max",
                "memory.events",
                "memory.stat",
                "cpu.stat",
                "cpu.max",
                "memory.pressure",
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "memory.oom_control",
                "cpu.cfs_quota_us",
            ] {
                let p = Path::new(dir).join(f);
                if std::fs::read(&p).is_ok() {
                    paths.push(p);
                }
            }
        }
        let mut buf = Vec::new();
        let mut whole = Vec::new();
        for p in &paths {
            let Ok(k) = KeptFile::open(p) else { continue };
            let kept = k.read(&mut buf).unwrap().to_vec();
            let full = read_whole(p, &mut whole).unwrap().to_vec();
            assert!(!kept.is_empty(), "{}", p.display());
            let lines = |b: &[u8]| b.split(|c| *c == b'\n').count();
            assert_eq!(lines(&kept), lines(&full), "{}", p.display());
            assert!(kept.ends_with(b"\n"), "{}: cut short", p.display());
        }
        // A file of several pages (under the bound) read through a smaller buffer: every byte.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let text: Vec<u8> = (0..5_000u32)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        assert!(text.len() > 4096 && text.len() < MAX_PSEUDO_FILE);
        f.write_all(&text).unwrap();
        let k = KeptFile::open(f.path()).unwrap();
        assert!(k.read(&mut Vec::new()).unwrap() == &text[..]);
        assert!(read_whole(f.path(), &mut Vec::new()).unwrap() == &text[..]);
    }

    /// A file the kernel writes a record at a time, many pages long: `read_whole` gets all of it.
    #[test]
    fn read_whole_reads_past_page_sized_parts() {
        let mut buf = Vec::new();
        let maps = read_whole(Path::new("/proc/self/smaps"), &mut buf)
            .unwrap()
            .to_vec();
        let lines = maps
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let reference = std::fs::read_to_string("/proc/self/smaps")
            .unwrap()
            .lines()
            .count();
        // Mappings may come and go between the two reads (allocator arenas); not by half.
        assert!(
            lines * 2 > reference && maps.len() > 4096,
            "{lines} of {reference}"
        );
    }

    #[test]
    fn live_proc_file_rereads() {
        let k = KeptFile::open("/proc/self/stat").unwrap();
        let mut buf = Vec::new();
        let a = k.read(&mut buf).unwrap().to_vec();
        let b = k.read(&mut buf).unwrap().to_vec();
        assert!(a.starts_with(format!("{} (", std::process::id()).as_bytes()));
        assert!(b.starts_with(format!("{} (", std::process::id()).as_bytes()));
    }
}

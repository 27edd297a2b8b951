//! A procfs or cgroupfs file kept open and re-read from offset 0 each tick, saving the open/close pair.

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

    /// Reads the whole content into `buf` (cleared first) and returns it. Keeps `buf`'s capacity so a
    /// steady tick allocates nothing.
    pub fn read<'a>(&self, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        buf.clear();
        if buf.capacity() < 4096 {
            buf.reserve(4096);
        }
        let mut off = 0usize;
        loop {
            if buf.len() == buf.capacity() {
                if buf.len() >= MAX_PSEUDO_FILE {
                    break;
                }
                buf.reserve(buf.len());
            }
            let len = buf.len();
            let spare = buf.capacity() - len;
            buf.resize(len + spare, 0);
            let n = match self.file.read_at(&mut buf[len..], off as u64) {
                Ok(n) => n,
                Err(e) => {
                    buf.truncate(len);
                    return Err(e);
                }
            };
            buf.truncate(len + n);
            if n == 0 {
                break;
            }
            off += n;
        }
        Ok(&buf[..])
    }
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

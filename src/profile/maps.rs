//! A process's memory map (`/proc/PID/maps`) and where its files are seen from vitals: through
//! `/proc/PID/root`, the process's own mount namespace, so a target in another container resolves to its
//! own files, not to whatever vitals' image has at the same path.

use std::path::{Path, PathBuf};

/// One executable or file-backed mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Executable.
    pub exec: bool,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// The path as the target sees it (`/usr/lib/…`), or a pseudo name (`[vdso]`), or empty.
    pub path: String,
}

impl Mapping {
    /// The mapped file's path seen from vitals, through the target's root; None for memory not backed
    /// by a file.
    pub fn file_from(&self, proc_root: &Path, pid: u32) -> Option<PathBuf> {
        let rel = self.path.strip_suffix(" (deleted)").unwrap_or(&self.path);
        let rel = rel.strip_prefix('/')?;
        Some(proc_root.join(pid.to_string()).join("root").join(rel))
    }

    /// The file offset of `addr` inside this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// The mappings of one process, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct MemoryMap {
    /// Sorted, non-overlapping.
    pub mappings: Vec<Mapping>,
}

/// Mappings kept at most per process (a JVM has a few thousand).
const MAX_MAPPINGS: usize = 65_536;

impl MemoryMap {
    /// Reads `/proc/PID/maps`.
    pub fn read(proc_root: &Path, pid: u32) -> std::io::Result<MemoryMap> {
        let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps"))?;
        Ok(MemoryMap::parse(&text))
    }

    /// Parses the text of a maps file; malformed lines are skipped.
    pub fn parse(text: &str) -> MemoryMap {
        let mut mappings: Vec<Mapping> = text
            .lines()
            .filter_map(parse_line)
            .take(MAX_MAPPINGS)
            .collect();
        mappings.sort_by_key(|m| m.start);
        MemoryMap { mappings }
    }

    /// The mapping holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Where the file mapped at `m` starts in memory (its mapping with offset 0), for reading its ELF
    /// header from the process.
    pub fn image_start(&self, m: &Mapping) -> Option<u64> {
        self.mappings
            .iter()
            .find(|o| o.path == m.path && o.inode == m.inode && o.offset == 0)
            .map(|o| o.start)
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    // 7f1c2a000000-7f1c2a022000 r-xp 00001000 08:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    Some(Mapping {
        start,
        end,
        offset: u64::from_str_radix(offset, 16).ok()?,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        inode: inode.parse().ok()?,
        path,
    })
}

/// The pid the process has in its own pid namespace (the last `NSpid` field), which is what a runtime
/// writes into `/tmp/perf-PID.map` and the JVM into its attach socket name.
pub fn namespace_pid(proc_root: &Path, pid: u32) -> u32 {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last().and_then(|p| p.parse().ok()))
        })
        .unwrap_or(pid)
}

/// The GNU build id of the ELF image mapped at `image_start` in process `pid`, read from its memory
/// (`/proc/PID/mem`): what is really running, to compare with the file vitals opens. None when the memory
/// cannot be read (another user, Yama) or holds no build-id note.
pub fn build_id_in_memory(proc_root: &Path, pid: u32, image_start: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(proc_root.join(pid.to_string()).join("mem")).ok()?;
    let read = |at: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        mem.read_exact_at(&mut buf, at).ok()?;
        Some(buf)
    };
    let header = read(image_start, 64)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 {
        return None;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&header, 32);
    let phentsize = u16_at(&header, 54) as usize;
    let phnum = (u16_at(&header, 56) as usize).min(128);
    if phentsize < 56 {
        return None;
    }
    let phdrs = read(image_start + phoff, phentsize * phnum)?;
    // The load bias: where the image is minus where its first segment says it is.
    let mut first_vaddr = None;
    let mut notes = Vec::new();
    for i in 0..phnum {
        let p = &phdrs[i * phentsize..];
        let kind = u32_at(p, 0);
        let vaddr = u64_at(p, 16);
        let memsz = u64_at(p, 40);
        if kind == 1 && first_vaddr.is_none() {
            first_vaddr = Some(vaddr & !0xfff);
        }
        if kind == 4 {
            notes.push((vaddr, memsz.min(4096)));
        }
    }
    let bias = image_start.wrapping_sub(first_vaddr?);
    for (vaddr, size) in notes {
        let data = read(bias.wrapping_add(vaddr), size as usize)?;
        let mut at = 0usize;
        while at + 12 <= data.len() {
            let namesz = u32_at(&data, at) as usize;
            let descsz = u32_at(&data, at + 4) as usize;
            let kind = u32_at(&data, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if end > data.len() {
                break;
            }
            if kind == 3 && data.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return Some(data[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 08:01 131 /usr/bin/burn
55d0c8a01000-55d0c8a02000 r-xp 00001000 08:01 131 /usr/bin/burn
7f00aa000000-7f00aa100000 rwxp 00000000 00:00 0 
7f00ab000000-7f00ab022000 r-xp 00028000 08:01 77 /usr/lib/libc.so.6 (deleted)
7ffd1000000-7ffd1001000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn maps_parse_and_find() {
        let m = MemoryMap::parse(MAPS);
        assert_eq!(m.mappings.len(), 5);
        let code = m.find(0x55d0c8a01010).expect("in burn's text");
        assert!(code.exec);
        assert_eq!(code.file_offset(0x55d0c8a01010), 0x1010);
        assert_eq!(m.image_start(code), Some(0x55d0c8a00000));
        assert!(m.find(0x55d0c8a02000).is_none());
        let jit = m.find(0x7f00aa000010).expect("anonymous");
        assert!(jit.exec && jit.path.is_empty());
        let libc = m.find(0x7f00ab000000).expect("libc");
        assert_eq!(
            libc.file_from(Path::new("/proc"), 42),
            Some(PathBuf::from("/proc/42/root/usr/lib/libc.so.6"))
        );
        assert_eq!(jit.file_from(Path::new("/proc"), 42), None);
    }
}

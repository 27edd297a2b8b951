//! Names for addresses: the target's own ELF files read through `/proc/PID/root` (blazesym: ELF symbol
//! tables, DWARF lines and inlined functions, Rust and C++ demangling), their build ids compared with the
//! image in the target's memory, JIT code from the runtime's perf map file, and kernel frames from
//! `/proc/kallsyms`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Sym, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use super::maps::{build_id_in_memory, namespace_pid, MemoryMap};

/// Addresses at or above this are kernel addresses (x86-64 canonical upper half).
pub const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Largest perf map file read (Node's `--perf-basic-prof` map only grows).
const MAX_PERF_MAP_BYTES: u64 = 256 << 20;

/// One function of a location: the innermost inlined call first, the real function last.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    /// Function name, demangled.
    pub function: String,
    /// Source file, when the binary has line tables.
    pub file: Option<String>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// A symbolised address.
#[derive(Debug, Clone)]
pub struct Location {
    /// The address as sampled (a return address minus one for callers).
    pub address: u64,
    /// Index into [`SymbolTable::mappings`].
    pub mapping: Option<usize>,
    /// Functions, innermost first; never empty.
    pub lines: Vec<Line>,
}

/// A mapped file of the profile.
#[derive(Debug, Clone)]
pub struct MappedFile {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path as the target sees it.
    pub path: String,
    /// The build id, hex, when the file has one.
    pub build_id: Option<String>,
}

/// Counts of how symbolisation went, for the status and the profile's comments.
#[derive(Debug, Clone, Copy, Default)]
pub struct SymbolStats {
    /// Distinct user addresses.
    pub user: u64,
    /// Of which named (from an ELF file or a perf map).
    pub named: u64,
    /// Of which named from a perf map (JIT code).
    pub jit: u64,
    /// Files whose build id differs from the image in memory (their addresses are left unnamed).
    pub build_id_mismatches: u64,
    /// Files whose build id was compared with the image in memory and matched.
    pub build_ids_checked: u64,
}

/// Every address of a profile, named.
#[derive(Debug, Default)]
pub struct SymbolTable {
    /// Locations, indexed by [`SymbolTable::index`].
    pub locations: Vec<Location>,
    /// (pid, address) → index into `locations`; kernel addresses under pid 0.
    pub index: HashMap<(u32, u64), usize>,
    /// Files the locations are in.
    pub mappings: Vec<MappedFile>,
    /// How it went.
    pub stats: SymbolStats,
}

/// Names the addresses of `by_pid` (kernel addresses may be under any pid).
pub fn symbolize(proc_root: &Path, by_pid: &HashMap<u32, BTreeSet<u64>>) -> SymbolTable {
    let mut table = SymbolTable::default();
    let symbolizer = Symbolizer::builder().build();
    let kernel: BTreeSet<u64> = by_pid
        .values()
        .flat_map(|s| s.range(KERNEL_START..).copied())
        .collect();
    symbolize_kernel(&symbolizer, &kernel, &mut table);
    for (&pid, addrs) in by_pid {
        let user: Vec<u64> = addrs.range(..KERNEL_START).copied().collect();
        // Separate debug files are looked for in the target's own /usr/lib/debug.
        let debug_dir = proc_root.join(pid.to_string()).join("root/usr/lib/debug");
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .set_debug_dirs(Some([debug_dir]))
            .build();
        symbolize_process(&symbolizer, proc_root, pid, &user, &mut table);
    }
    table
}

fn push(table: &mut SymbolTable, key: (u32, u64), mapping: Option<usize>, lines: Vec<Line>) {
    table.index.insert(key, table.locations.len());
    table.locations.push(Location {
        address: key.1,
        mapping,
        lines,
    });
}

fn unnamed(what: &str) -> Vec<Line> {
    vec![Line {
        function: what.to_owned(),
        file: None,
        line: 0,
    }]
}

fn symbolize_kernel(symbolizer: &Symbolizer, addrs: &BTreeSet<u64>, table: &mut SymbolTable) {
    if addrs.is_empty() {
        return;
    }
    let list: Vec<u64> = addrs.iter().copied().collect();
    let src = Source::Kernel(Kernel {
        kallsyms: MaybeDefault::Default,
        vmlinux: MaybeDefault::None,
        kaslr_offset: Some(0),
        debug_syms: false,
        ..Default::default()
    });
    let names = symbolizer.symbolize(&src, Input::AbsAddr(&list)).ok();
    for (i, &a) in list.iter().enumerate() {
        let lines = match names.as_ref().and_then(|n| n.get(i)) {
            Some(Symbolized::Sym(sym)) => lines_of(sym),
            _ => unnamed("[kernel]"),
        };
        push(table, (0, a), None, lines);
    }
}

fn lines_of(sym: &Sym<'_>) -> Vec<Line> {
    let code = |c: &Option<blazesym::symbolize::CodeInfo<'_>>| {
        c.as_ref().map(|c| {
            let file = match &c.dir {
                Some(d) => d.join(&*c.file).display().to_string(),
                None => c.file.to_string_lossy().into_owned(),
            };
            (Some(file), c.line.unwrap_or(0))
        })
    };
    let mut out = Vec::with_capacity(sym.inlined.len() + 1);
    // blazesym lists inlined calls outermost first; pprof wants the innermost first.
    for f in sym.inlined.iter().rev() {
        let (file, line) = code(&f.code_info).unwrap_or((None, 0));
        out.push(Line {
            function: f.name.to_string(),
            file,
            line,
        });
    }
    let (file, line) = sym
        .code_info
        .as_deref()
        .map(|c| code(&Some(c.clone())).unwrap_or((None, 0)))
        .unwrap_or((None, 0));
    out.push(Line {
        function: sym.name.to_string(),
        file,
        line,
    });
    out
}

/// A runtime's perf map: `START SIZE NAME` lines, sorted by start.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// The map the process writes to `/tmp/perf-NSPID.map` in its own mount namespace.
    pub fn path(proc_root: &Path, pid: u32) -> PathBuf {
        let nspid = namespace_pid(proc_root, pid);
        proc_root
            .join(pid.to_string())
            .join("root/tmp")
            .join(format!("perf-{nspid}.map"))
    }

    /// Reads and parses a perf map; a missing or oversized file gives an empty map.
    pub fn load(path: &Path) -> PerfMap {
        let too_big = std::fs::metadata(path).map_or(true, |m| m.len() > MAX_PERF_MAP_BYTES);
        if too_big {
            return PerfMap::default();
        }
        let text = std::fs::read(path).unwrap_or_default();
        PerfMap::parse(&String::from_utf8_lossy(&text))
    }

    /// Parses perf map text; malformed lines are skipped. A later line for the same start wins (code
    /// moved or was replaced).
    pub fn parse(text: &str) -> PerfMap {
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let start = hex(parts.next()?)?;
                let size = hex(parts.next()?)?;
                let name = parts.next()?.trim();
                (size > 0 && !name.is_empty()).then(|| (start, start + size, name.to_owned()))
            })
            .collect();
        // Stable sort keeps file order among equal starts; keep the last of each start.
        entries.sort_by_key(|e| e.0);
        let mut deduped: Vec<(u64, u64, String)> = Vec::with_capacity(entries.len());
        for e in entries {
            match deduped.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => deduped.push(e),
            }
        }
        PerfMap { entries: deduped }
    }

    /// The name of the code holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr < e.1).then_some(e.2.as_str())
    }

    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn symbolize_process(
    symbolizer: &Symbolizer,
    proc_root: &Path,
    pid: u32,
    addrs: &[u64],
    table: &mut SymbolTable,
) {
    if addrs.is_empty() {
        return;
    }
    table.stats.user += addrs.len() as u64;
    let map = MemoryMap::read(proc_root, pid).unwrap_or_default();
    let perf_map = PerfMap::load(&PerfMap::path(proc_root, pid));
    // Addresses grouped by the mapped file holding them.
    let mut by_file: HashMap<(String, u64), Vec<u64>> = HashMap::new();
    let mut jit = Vec::new();
    for &a in addrs {
        match map.find(a) {
            Some(m) if m.path.starts_with('/') => by_file
                .entry((m.path.clone(), m.inode))
                .or_default()
                .push(a),
            _ => jit.push(a),
        }
    }
    for a in jit {
        let lines = match perf_map.find(a) {
            Some(name) => {
                table.stats.named += 1;
                table.stats.jit += 1;
                unnamed(name)
            }
            None => match map.find(a) {
                Some(m) if !m.path.is_empty() => unnamed(&m.path),
                _ => unnamed("[unknown]"),
            },
        };
        push(table, (pid, a), None, lines);
    }
    for ((path, _), list) in by_file {
        let Some(m) = map.find(list[0]).cloned() else {
            continue;
        };
        let Some(file) = m.file_from(proc_root, pid) else {
            continue;
        };
        let on_disk = blazesym::helper::read_elf_build_id(&file).ok().flatten();
        let in_memory = map
            .image_start(&m)
            .and_then(|s| build_id_in_memory(proc_root, pid, s));
        let mismatch = match (&on_disk, &in_memory) {
            (Some(d), Some(mem)) => {
                table.stats.build_ids_checked += 1;
                d.as_ref() != mem.as_slice()
            }
            _ => false,
        };
        let base = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let mapping = table.mappings.len();
        table.mappings.push(MappedFile {
            start: m.start,
            end: m.end,
            offset: m.offset,
            path: path.clone(),
            build_id: on_disk.as_deref().map(hex),
        });
        if mismatch {
            table.stats.build_id_mismatches += 1;
            for a in list {
                push(
                    table,
                    (pid, a),
                    Some(mapping),
                    unnamed(&format!(
                        "[{base}: build id differs from the running image]"
                    )),
                );
            }
            continue;
        }
        let offsets: Vec<u64> = list
            .iter()
            .map(|&a| map.find(a).map_or(0, |m| m.file_offset(a)))
            .collect();
        let src = Source::Elf(Elf::new(&file));
        let names = symbolizer.symbolize(&src, Input::FileOffset(&offsets)).ok();
        for (i, &a) in list.iter().enumerate() {
            let lines = match names.as_ref().and_then(|n| n.get(i)) {
                Some(Symbolized::Sym(sym)) => {
                    table.stats.named += 1;
                    lines_of(sym)
                }
                _ => match perf_map.find(a) {
                    Some(name) => {
                        table.stats.named += 1;
                        unnamed(name)
                    }
                    None => unnamed(&format!("[{base}]")),
                },
            };
            push(table, (pid, a), Some(mapping), lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_maps_parse_and_the_last_entry_for_an_address_wins() {
        let m = PerfMap::parse(
            "7f0000001000 40 LazyCompile:*hot /app/x.js:3\n\
             bad line\n\
             0x7f0000002000 0x10 py::spin:/app/s.py\n\
             7f0000001000 40 LazyCompile:*hotter /app/x.js:3\n\
             7f0000003000 0 empty\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.find(0x7f000000103f),
            Some("LazyCompile:*hotter /app/x.js:3")
        );
        assert_eq!(m.find(0x7f0000001040), None);
        assert_eq!(m.find(0x7f0000002008), Some("py::spin:/app/s.py"));
        assert_eq!(m.find(0x10), None);
    }
}

//! User stacks: DWARF unwinding of the stack copied with each sample (framehop, reading each mapped
//! file's `.eh_frame`), which is right for code built without frame pointers (glibc, most distribution
//! binaries), joined to the kernel's frame-pointer walk where the copy ends.
//!
//! The choice is made per mapping, automatically: a mapping whose file has unwind tables is unwound by
//! them; code with none (JIT code in anonymous memory, files without `.eh_frame`) is unwound by its frame
//! pointer. When the copied stack ends before the outermost frame (deeper stacks than [`super::perf`]'s
//! copy), the kernel's frame-pointer chain continues from the last return address both walks agree on.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};

use super::maps::MemoryMap;
use super::perf::RawSample;

/// Frames kept per stack, kernel and user together.
pub const MAX_FRAMES: usize = 256;

/// Largest file read for its unwind tables (a JVM's libjvm.so is ~20 MiB).
const MAX_FILE_BYTES: u64 = 512 << 20;

/// How often a process's modules are reloaded when a sample's ip falls outside every known mapping
/// (a library loaded since).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Unwinding state of one process.
struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Vec<u8>>,
    map: MemoryMap,
    loaded: Instant,
}

/// Unwinds the samples of a set of processes.
pub struct StackWalker {
    proc_root: std::path::PathBuf,
    processes: HashMap<u32, ProcessUnwinder>,
    cache: CacheX86_64,
    /// Samples whose user stack came from the DWARF walk (fully or joined to the kernel's chain).
    pub dwarf_stacks: u64,
    /// Samples whose user stack is the kernel's frame-pointer walk alone.
    pub fp_stacks: u64,
}

impl StackWalker {
    /// A walker reading processes under `proc_root`.
    pub fn new(proc_root: &Path) -> StackWalker {
        StackWalker {
            proc_root: proc_root.to_owned(),
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
            dwarf_stacks: 0,
            fp_stacks: 0,
        }
    }

    fn process(&mut self, pid: u32, ip: u64) -> Option<&ProcessUnwinder> {
        let stale = match self.processes.get(&pid) {
            None => true,
            Some(p) => p.map.find(ip).is_none() && p.loaded.elapsed() >= RELOAD_EVERY,
        };
        if stale {
            let map = MemoryMap::read(&self.proc_root, pid).ok()?;
            let unwinder = load_modules(&self.proc_root, pid, &map);
            // A process that ended is forgotten with its modules; few live ones are kept.
            if self.processes.len() >= 256 {
                self.processes.clear();
            }
            self.processes.insert(
                pid,
                ProcessUnwinder {
                    unwinder,
                    map,
                    loaded: Instant::now(),
                },
            );
        }
        self.processes.get(&pid)
    }

    /// The stack of one sample into `out`, leaf first: kernel frames, then user frames. Every address
    /// but each part's leaf is a return address minus one, so it falls inside the call instruction.
    pub fn walk(&mut self, sample: &RawSample, stack: &[u8], out: &mut Vec<u64>) {
        out.clear();
        push_chain(&sample.kernel, out);
        let before = out.len();
        let dwarf = match sample.regs {
            Some([bp, sp, ip]) if !stack.is_empty() => {
                let mut cache = std::mem::take(&mut self.cache);
                let walked = self.dwarf_walk(sample.pid, [bp, sp, ip], stack, &mut cache, out);
                self.cache = cache;
                walked
            }
            _ => None,
        };
        match dwarf {
            Some(complete) => {
                self.dwarf_stacks += 1;
                if !complete {
                    join_fp_chain(&sample.user_fp, before, out);
                }
            }
            None => {
                self.fp_stacks += 1;
                out.truncate(before);
                push_chain(&sample.user_fp, out);
            }
        }
        out.truncate(MAX_FRAMES);
    }

    /// Unwinds from the registers over the copied stack; Some(true) when it reached the outermost
    /// frame, Some(false) when it stopped early, None when the process is unknown.
    fn dwarf_walk(
        &mut self,
        pid: u32,
        [bp, sp, ip]: [u64; 3],
        stack: &[u8],
        cache: &mut CacheX86_64,
        out: &mut Vec<u64>,
    ) -> Option<bool> {
        let p = self.process(pid, ip)?;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = p.unwinder.iter_frames(
            ip,
            UnwindRegsX86_64::new(ip, sp, bp),
            cache,
            &mut read_stack,
        );
        loop {
            if out.len() >= MAX_FRAMES {
                return Some(true);
            }
            match frames.next() {
                Ok(Some(FrameAddress::InstructionPointer(a))) => out.push(a),
                Ok(Some(FrameAddress::ReturnAddress(a))) => out.push(a.get() - 1),
                Ok(None) => return Some(true),
                Err(_) => return Some(false),
            }
        }
    }
}

/// Appends a leaf-first chain, return addresses moved into their call instruction.
fn push_chain(chain: &[u64], out: &mut Vec<u64>) {
    for (i, &a) in chain.iter().enumerate() {
        if out.len() >= MAX_FRAMES {
            return;
        }
        out.push(if i == 0 { a } else { a.saturating_sub(1) });
    }
}

/// Continues a DWARF walk that stopped early (`out[user_start..]`) with the kernel's frame-pointer chain,
/// from the last return address both have; when they share none the walk stays as it is.
fn join_fp_chain(fp: &[u64], user_start: usize, out: &mut Vec<u64>) {
    let Some(&last) = out[user_start..].last() else {
        return;
    };
    if out.len() - user_start < 2 {
        return;
    }
    // Chain entries are raw return addresses; the walk holds them minus one.
    if let Some(j) = fp.iter().skip(1).position(|&a| a.saturating_sub(1) == last) {
        for &a in &fp[j + 2..] {
            if out.len() >= MAX_FRAMES {
                break;
            }
            out.push(a.saturating_sub(1));
        }
    }
}

/// A framehop unwinder with a module per executable file mapping of the process, each read through
/// the process's root. Files that cannot be read are left out: their code is unwound by frame pointer.
fn load_modules(proc_root: &Path, pid: u32, map: &MemoryMap) -> UnwinderX86_64<Vec<u8>> {
    let mut unwinder = UnwinderX86_64::new();
    for m in map.mappings.iter().filter(|m| m.exec) {
        let Some(file) = m.file_from(proc_root, pid) else {
            continue;
        };
        if let Some(module) = module_for(&file, m.start, m.end, m.offset) {
            unwinder.add_module(module);
        }
    }
    unwinder
}

fn module_for(file: &Path, start: u64, end: u64, offset: u64) -> Option<Module<Vec<u8>>> {
    let len = std::fs::metadata(file).ok()?.len();
    if len > MAX_FILE_BYTES {
        return None;
    }
    let data = std::fs::read(file).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    // The load bias: the mapping's address minus the address its file offset has in the ELF.
    let seg = elf.segments().find(|s| {
        let (o, size) = s.file_range();
        offset >= o && offset < o + size.max(1)
    })?;
    let (seg_off, _) = seg.file_range();
    let bias = start.wrapping_sub(seg.address() + (offset - seg_off));
    let section = |name: &str| {
        let s = elf.section_by_name(name)?;
        Some((s.address()..s.address() + s.size(), s.data().ok()?.to_vec()))
    };
    let range = |name: &str| {
        elf.section_by_name(name)
            .map(|s| s.address()..s.address() + s.size())
    };
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let debug_frame = section(".debug_frame").map(|(_, d)| d);
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: range(".text"),
        got_svma: range(".got"),
        eh_frame_svma: eh_frame.as_ref().map(|(r, _)| r.clone()),
        eh_frame: eh_frame.map(|(_, d)| d),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
        eh_frame_hdr: eh_frame_hdr.map(|(_, d)| d),
        debug_frame,
        ..Default::default()
    };
    Some(Module::new(
        file.display().to_string(),
        start..end,
        bias,
        info,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_walk_is_continued_by_the_frame_pointer_chain() {
        // The DWARF walk found ip, a, b (b stored minus one); the chain has ip, a+1, b+1, c+1, d+1.
        let mut out = vec![0x10, 0x20, 0x30];
        join_fp_chain(&[0x10, 0x21, 0x31, 0x41, 0x51], 0, &mut out);
        assert_eq!(out, vec![0x10, 0x20, 0x30, 0x40, 0x50]);
        // No common return address: left alone.
        let mut out = vec![0x10, 0x20, 0x30];
        join_fp_chain(&[0x10, 0x99, 0x41], 0, &mut out);
        assert_eq!(out, vec![0x10, 0x20, 0x30]);
    }

    #[test]
    fn chains_move_return_addresses_into_the_call() {
        let mut out = Vec::new();
        push_chain(&[0x100, 0x201, 0x301], &mut out);
        assert_eq!(out, vec![0x100, 0x200, 0x300]);
    }
}

//! CPU sampling of a set of threads with `perf_event_open`: one task-clock event per (thread, CPU), each
//! CPU's events writing into one ring buffer, and the records of those rings decoded into samples.
//!
//! Per (thread, CPU) rather than one event per thread: the kernel lets events share a ring only when they
//! are on the same CPU, and one ring per thread would need locked memory per thread, of which an
//! unprivileged user has `perf_event_mlock_kb` (516 KiB) per CPU. Rings per CPU keep the locked memory at
//! [`RING_PAGES`] pages per CPU whatever the thread count.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use perf_event_open_sys as sys;

/// Pages of sample data per CPU ring (plus one header page) of an on-demand profile: 256 KiB, enough for
/// 99 samples a second with 16 KiB stack copies drained every 50 ms many times over.
pub const RING_PAGES: usize = 64;

/// Pages per CPU ring of the continuous profiler: 64 KiB, four times what 19 samples a second with 16 KiB
/// stack copies write between two drains 100 ms apart. With an on-demand profile's rings beside them the
/// locked memory stays under the 516 KiB per CPU an unprivileged user has (`perf_event_mlock_kb`).
pub const CONTINUOUS_RING_PAGES: usize = 16;

/// Registers copied with each sample for DWARF unwinding: bp, sp, ip (x86-64 numbering).
const USER_REGS: u64 = (1 << sys::bindings::PERF_REG_X86_BP)
    | (1 << sys::bindings::PERF_REG_X86_SP)
    | (1 << sys::bindings::PERF_REG_X86_IP);

/// What to sample.
#[derive(Debug, Clone, Copy)]
pub struct SamplingPlan {
    /// Samples per second of each thread's CPU time.
    pub frequency_hz: u64,
    /// Bytes of user stack copied with each sample for DWARF unwinding (0: frame pointers only). The
    /// kernel caps it below 64 KiB and rounds it to 8 bytes.
    pub stack_bytes: u32,
    /// Whether to ask for kernel frames (refused where `perf_event_paranoid` >= 2 without CAP_PERFMON).
    pub kernel: bool,
    /// Data pages of each CPU's ring (a power of two).
    pub ring_pages: usize,
}

impl SamplingPlan {
    /// The sampling period in nanoseconds of CPU time, which is what every sample stands for.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency_hz.max(1)
    }
}

/// Why events could not be opened, from the errno of `perf_event_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRefusal {
    /// EACCES: `kernel.perf_event_paranoid` forbids it for a process without CAP_PERFMON.
    Paranoid,
    /// EPERM: the thread belongs to another user (ptrace access mode check), or a seccomp filter or a
    /// missing capability forbids the call.
    Permission,
    /// ENOSYS/ENOENT/EOPNOTSUPP: the kernel has no perf events (or no task clock).
    Unsupported,
    /// ESRCH: the thread is gone.
    Gone,
    /// Anything else (EMFILE, ENOMEM, EINVAL…).
    Other(i32),
}

impl OpenRefusal {
    fn from_errno(e: i32) -> OpenRefusal {
        match e {
            libc::EACCES => OpenRefusal::Paranoid,
            libc::EPERM => OpenRefusal::Permission,
            libc::ENOSYS | libc::ENOENT | libc::EOPNOTSUPP => OpenRefusal::Unsupported,
            libc::ESRCH => OpenRefusal::Gone,
            e => OpenRefusal::Other(e),
        }
    }
}

/// One decoded sample.
#[derive(Debug, Default)]
pub struct RawSample {
    /// Process id (as vitals sees it).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Kernel frames, leaf first.
    pub kernel: Vec<u64>,
    /// User frames from the kernel's frame-pointer walk, leaf (the sampled ip) first.
    pub user_fp: Vec<u64>,
    /// User registers bp, sp, ip at the sample, when the sample was taken in user mode or the kernel had
    /// them.
    pub regs: Option<[u64; 3]>,
}

/// A mapped ring buffer.
struct Ring {
    base: *mut u8,
    len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by the ring and only touched through &mut self.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: &OwnedFd, pages: usize) -> std::io::Result<Ring> {
        let page = page_size();
        let len = page * (pages + 1);
        // SAFETY: a fresh shared mapping of the event's ring; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Kernels since 4.1 state where the data lives; older ones put it right after the header page.
        let header = base as *const sys::bindings::perf_event_mmap_page;
        // SAFETY: the first page is the header the kernel filled in.
        let (off, size) = unsafe { ((*header).data_offset, (*header).data_size) };
        let (data_offset, data_size) = if size == 0 {
            (page, page * pages)
        } else {
            (off as usize, size as usize)
        };
        Ok(Ring {
            base: base as *mut u8,
            len,
            data_offset,
            data_size,
        })
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let header = self.base as *const sys::bindings::perf_event_mmap_page;
        // SAFETY: data_head/data_tail are u64 fields of the mapped header, 8-byte aligned; the kernel
        // writes head and reads tail, so both are accessed atomically.
        unsafe {
            (
                &*(std::ptr::addr_of!((*header).data_head) as *const AtomicU64),
                &*(std::ptr::addr_of!((*header).data_tail) as *const AtomicU64),
            )
        }
    }

    /// Copies every complete record out of the ring and hands it to `each`, then frees the space.
    fn drain(&mut self, scratch: &mut Vec<u8>, mut each: impl FnMut(u32, &[u8])) {
        let (head_a, tail_a) = self.head_tail();
        let head = head_a.load(Ordering::Acquire);
        let mut tail = tail_a.load(Ordering::Relaxed);
        // SAFETY: the data area lies within the mapping (offsets from the kernel's header).
        let data =
            unsafe { std::slice::from_raw_parts(self.base.add(self.data_offset), self.data_size) };
        while tail + 8 <= head {
            let at = (tail % self.data_size as u64) as usize;
            scratch.clear();
            copy_wrapped(data, at, 8, scratch);
            let kind = u32::from_ne_bytes([scratch[0], scratch[1], scratch[2], scratch[3]]);
            let size = u16::from_ne_bytes([scratch[6], scratch[7]]) as usize;
            if size < 8 || tail + size as u64 > head {
                break;
            }
            scratch.clear();
            copy_wrapped(data, at, size, scratch);
            each(kind, &scratch[8..]);
            tail += size as u64;
        }
        tail_a.store(tail, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `map`.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

fn copy_wrapped(data: &[u8], at: usize, len: usize, out: &mut Vec<u8>) {
    let first = len.min(data.len() - at);
    out.extend_from_slice(&data[at..at + first]);
    out.extend_from_slice(&data[..len - first]);
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,5").
pub fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let cpus = parse_cpu_list(text.trim());
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n as i32).collect()
    } else {
        cpus
    }
}

fn parse_cpu_list(text: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => out.extend(part.parse::<i32>().ok()),
        }
    }
    out
}

/// The open events of one profile: per CPU a ring, per (thread, CPU) an event writing into it.
pub struct EventSet {
    plan: SamplingPlan,
    cpus: Vec<i32>,
    rings: Vec<(OwnedFd, Ring)>,
    /// Events per thread, so a thread already followed is not opened twice.
    threads: HashMap<u32, Vec<OwnedFd>>,
    /// Kernel frames were asked for and granted.
    pub kernel_frames: bool,
    /// Records the kernel dropped because a ring was full.
    pub lost: u64,
    scratch: Vec<u8>,
}

/// Threads followed at most; each costs one descriptor per CPU.
pub const MAX_THREADS: usize = 2048;

impl EventSet {
    /// Opens the rings and the events of every thread of `pids`. Kernel frames are dropped (and
    /// [`EventSet::kernel_frames`] says so) when the kernel refuses them.
    pub fn open(
        plan: SamplingPlan,
        pids: &[u32],
        proc_root: &std::path::Path,
    ) -> Result<EventSet, OpenRefusal> {
        let cpus = online_cpus();
        let mut set = EventSet {
            plan,
            cpus,
            rings: Vec::new(),
            threads: HashMap::new(),
            kernel_frames: plan.kernel,
            lost: 0,
            scratch: Vec::with_capacity(70_000),
        };
        let first = pids.first().copied().ok_or(OpenRefusal::Gone)?;
        // The first thread decides the rings and whether kernel frames are allowed.
        let fds = match set.open_thread(first, true) {
            Ok(fds) => fds,
            Err(OpenRefusal::Paranoid) if set.kernel_frames => {
                set.kernel_frames = false;
                set.open_thread(first, true)?
            }
            Err(e) => return Err(e),
        };
        set.threads.insert(first, fds);
        set.follow_new_threads(pids, proc_root);
        Ok(set)
    }

    /// Opens and closes one event on `pid` (no ring, no sampling): Ok(true) with kernel frames,
    /// Ok(false) with user frames only.
    pub fn probe(plan: SamplingPlan, pid: u32) -> Result<bool, OpenRefusal> {
        let mut set = EventSet {
            plan,
            cpus: vec![-1],
            rings: Vec::new(),
            threads: HashMap::new(),
            kernel_frames: plan.kernel,
            lost: 0,
            scratch: Vec::new(),
        };
        let open = |set: &EventSet| -> Result<(), OpenRefusal> {
            let mut attr = set.attr();
            // SAFETY: attr is a valid perf_event_attr of the size it states; the fd is checked.
            let fd = unsafe {
                sys::perf_event_open(
                    &mut attr,
                    pid as libc::pid_t,
                    -1,
                    -1,
                    sys::bindings::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
                )
            };
            if fd < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(OpenRefusal::from_errno(errno));
            }
            // SAFETY: fd is a fresh descriptor we own; dropping it closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        };
        match open(&set) {
            Ok(()) => Ok(set.kernel_frames),
            Err(OpenRefusal::Paranoid) if set.kernel_frames => {
                set.kernel_frames = false;
                open(&set).map(|()| false)
            }
            Err(e) => Err(e),
        }
    }

    /// Threads followed now.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    fn attr(&self) -> sys::bindings::perf_event_attr {
        let mut a = sys::bindings::perf_event_attr {
            type_: sys::bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
            config: sys::bindings::PERF_COUNT_SW_TASK_CLOCK as u64,
            ..Default::default()
        };
        a.__bindgen_anon_1.sample_period = self.plan.period_ns();
        let mut kinds = sys::bindings::PERF_SAMPLE_TID | sys::bindings::PERF_SAMPLE_CALLCHAIN;
        if self.plan.stack_bytes > 0 {
            kinds |= sys::bindings::PERF_SAMPLE_REGS_USER | sys::bindings::PERF_SAMPLE_STACK_USER;
            a.sample_regs_user = USER_REGS;
            a.sample_stack_user = self.plan.stack_bytes.min(65_528) & !7;
        }
        a.sample_type = kinds as u64;
        a.set_disabled(1);
        a.set_exclude_hv(1);
        if !self.kernel_frames {
            a.set_exclude_kernel(1);
            a.set_exclude_callchain_kernel(1);
        }
        a
    }

    /// Opens `tid`'s events, one per CPU; the first thread's events own the rings.
    fn open_thread(&mut self, tid: u32, owns_rings: bool) -> Result<Vec<OwnedFd>, OpenRefusal> {
        let mut fds = Vec::with_capacity(self.cpus.len());
        for (i, &cpu) in self.cpus.clone().iter().enumerate() {
            let mut attr = self.attr();
            // SAFETY: attr is a valid perf_event_attr of the size it states; the fd is checked.
            let fd = unsafe {
                sys::perf_event_open(
                    &mut attr,
                    tid as libc::pid_t,
                    cpu,
                    -1,
                    sys::bindings::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
                )
            };
            if fd < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(OpenRefusal::from_errno(errno));
            }
            // SAFETY: fd is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if owns_rings {
                let ring = Ring::map(&fd, self.plan.ring_pages.max(1).next_power_of_two())
                    .map_err(|e| OpenRefusal::Other(e.raw_os_error().unwrap_or(0)))?;
                let owner = fd
                    .try_clone()
                    .map_err(|e| OpenRefusal::Other(e.raw_os_error().unwrap_or(0)))?;
                self.rings.push((owner, ring));
            } else {
                let out = self.rings[i].0.as_raw_fd();
                // SAFETY: both are perf event descriptors on the same CPU.
                if unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), out) } != 0 {
                    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    return Err(OpenRefusal::from_errno(errno));
                }
            }
            // SAFETY: enabling a perf event descriptor we own.
            unsafe { sys::ioctls::ENABLE(fd.as_raw_fd(), 0) };
            fds.push(fd);
        }
        Ok(fds)
    }

    /// Opens events for threads of `pids` not yet followed (threads started since the last call); drops
    /// the events of threads that ended. Returns how many threads are followed.
    pub fn follow_new_threads(&mut self, pids: &[u32], proc_root: &std::path::Path) -> usize {
        let mut alive = Vec::new();
        for &pid in pids {
            let dir = proc_root.join(pid.to_string()).join("task");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            alive.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())),
            );
        }
        self.threads.retain(|tid, _| alive.contains(tid));
        for tid in alive {
            if self.threads.contains_key(&tid) || self.threads.len() >= MAX_THREADS {
                continue;
            }
            // A thread may end between the listing and the open; that is not an error.
            if let Ok(fds) = self.open_thread(tid, false) {
                self.threads.insert(tid, fds);
            }
        }
        self.threads.len()
    }

    /// Reads every ring, handing each sample to `each`.
    pub fn drain(&mut self, mut each: impl FnMut(&RawSample, &[u8])) {
        let with_stack = self.plan.stack_bytes > 0;
        let mut sample = RawSample::default();
        let mut lost = 0u64;
        for (_, ring) in &mut self.rings {
            ring.drain(&mut self.scratch, |kind, body| {
                if kind == sys::bindings::PERF_RECORD_LOST {
                    lost += read_u64(body, 8).unwrap_or(0);
                } else if kind == sys::bindings::PERF_RECORD_SAMPLE {
                    if let Some(stack) = parse_sample(body, with_stack, &mut sample) {
                        each(&sample, stack);
                    }
                }
            });
        }
        self.lost += lost;
    }
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_ne_bytes(s.try_into().unwrap_or([0; 8])))
}

/// Decodes a SAMPLE record of this set's layout (TID, CALLCHAIN, then REGS_USER and STACK_USER when
/// `with_stack`) into `out`; returns the copied user stack (empty without one). None for a malformed
/// record.
fn parse_sample<'a>(body: &'a [u8], with_stack: bool, out: &mut RawSample) -> Option<&'a [u8]> {
    out.kernel.clear();
    out.user_fp.clear();
    out.regs = None;
    let ids = read_u64(body, 0)?;
    out.pid = ids as u32;
    out.tid = (ids >> 32) as u32;
    let nr = read_u64(body, 8)? as usize;
    let mut at = 16;
    if nr > 4096 {
        return None;
    }
    let mut user = false;
    for _ in 0..nr {
        let ip = read_u64(body, at)?;
        at += 8;
        if ip >= sys::bindings::PERF_CONTEXT_MAX {
            user = ip == sys::bindings::PERF_CONTEXT_USER;
            continue;
        }
        if user {
            out.user_fp.push(ip);
        } else {
            out.kernel.push(ip);
        }
    }
    if !with_stack {
        return Some(&[]);
    }
    let abi = read_u64(body, at)?;
    at += 8;
    if abi != 0 {
        let bp = read_u64(body, at)?;
        let sp = read_u64(body, at + 8)?;
        let ip = read_u64(body, at + 16)?;
        at += 24;
        out.regs = Some([bp, sp, ip]);
    }
    let size = read_u64(body, at)? as usize;
    at += 8;
    if size == 0 {
        return Some(&[]);
    }
    let data = body.get(at..at + size)?;
    let dyn_size = read_u64(body, at + size)? as usize;
    Some(&data[..dyn_size.min(size)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,5"), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list("x,2"), vec![2]);
    }

    #[test]
    fn a_sample_record_decodes_and_a_truncated_one_is_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&(7u64 | (9u64 << 32)).to_ne_bytes());
        let chain = [
            sys::bindings::PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0000,
            sys::bindings::PERF_CONTEXT_USER,
            0x401000,
            0x401234,
        ];
        b.extend_from_slice(&(chain.len() as u64).to_ne_bytes());
        for c in chain {
            b.extend_from_slice(&c.to_ne_bytes());
        }
        b.extend_from_slice(&2u64.to_ne_bytes()); // abi 64
        for r in [1u64, 2, 0x401000] {
            b.extend_from_slice(&r.to_ne_bytes());
        }
        b.extend_from_slice(&16u64.to_ne_bytes());
        b.extend_from_slice(&[0xab; 16]);
        b.extend_from_slice(&8u64.to_ne_bytes());
        let mut s = RawSample::default();
        let stack = parse_sample(&b, true, &mut s).expect("decodes");
        assert_eq!((s.pid, s.tid), (7, 9));
        assert_eq!(s.kernel, vec![0xffff_ffff_8100_0000]);
        assert_eq!(s.user_fp, vec![0x401000, 0x401234]);
        assert_eq!(s.regs, Some([1, 2, 0x401000]));
        assert_eq!(stack.len(), 8);
        assert!(parse_sample(&b[..b.len() - 12], true, &mut s).is_none());
    }
}

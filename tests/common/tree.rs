//! The truth about a process tree, read from /proc with the `procfs` crate (not vitals' parser).

/// The tree under `root` as /proc shows it now.
#[derive(Debug, Default)]
pub struct Truth {
    pub pids: Vec<u32>,
    pub rss: f64,
    /// Own plus reaped children's CPU, seconds (what the kernel will never take back).
    pub cpu: f64,
    pub threads: f64,
    pub fds: f64,
}

pub fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = procfs::process::all_processes()
        .expect("list /proc")
        .flatten()
        .filter_map(|p| p.stat().ok().map(|s| (s.pid as u32, s.ppid as u32)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

pub fn truth(root: u32) -> Truth {
    let page = procfs::page_size() as f64;
    let hz = procfs::ticks_per_second() as f64;
    let mut t = Truth::default();
    for pid in descendants(root) {
        let Ok(p) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        let Ok(s) = p.stat() else { continue };
        if s.state == 'Z' {
            continue;
        }
        t.pids.push(pid);
        t.rss += s.rss as f64 * page;
        t.cpu += (s.utime + s.stime) as f64 / hz + (s.cutime + s.cstime) as f64 / hz;
        t.threads += s.num_threads as f64;
        t.fds += p.fd_count().unwrap_or(0) as f64;
    }
    t
}

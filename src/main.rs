//! The `vitals` command line: parse flags, build the configuration, start the runtime, map exit codes
//! (2 for a bad flag or config file, the child's code in `run` mode).

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vitals::config::{Cli, LogFormat};

fn main() {
    let cli = Cli::parse();
    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log-level {:?}: {e}", config.log_level);
            std::process::exit(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    raise_fd_limit();
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(vitals::app::run(config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

/// Raises the soft open-file limit to the hard one: containerd's default soft limit of 1024 would let
/// a thousand client connections starve `/metrics` and the probes of descriptors. Each listener also
/// caps its own connections, so the raised limit is a margin, not the bound.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("warning: cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot read the open-file limit: {e}"),
    }
}

/// Keeps glibc to two malloc arenas. By default every thread that allocates may get its own arena (up to
/// 8 per core), and memory freed in one is not reused by another: scrapes rendered on tokio's blocking
/// threads and requests decoded on its workers then leave RSS at the sum of every arena's peak (110 MiB
/// under steady 30,000-series scrapes, 67 MiB with two arenas; debug build). A sidecar's budget needs the smaller.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called once before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

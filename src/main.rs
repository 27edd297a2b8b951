//! The `vitals` command line: parse flags, build the configuration, set up logging, start the runtime,
//! map exit codes (2 for a bad flag, variable or config file; the child's code in `run` mode).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use vitals::config::{Cli, Command, Config, LogFormat, Selection, TargetSpec};
use vitals::logging::{print_error, LogSink};

/// Marks vitals' own lines on a stderr it shares with its child.
const RUN_MODE_PREFIX: &str = "[vitals] ";

fn main() {
    // Rust's runtime already ignores SIGPIPE, so a closed stdout/stderr shows up as EPIPE on write, which
    // every write below ignores; children get the default disposition back when they are spawned.
    let cli = match Cli::parse_from_env(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with code 0; errors to stderr with code 2.
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    let mut cli = cli;
    if let Some(Command::Inject(args)) = &cli.command {
        let args = args.clone();
        cli.command = None;
        std::process::exit(inject(cli, args));
    }
    let profile_command = match &cli.command {
        Some(Command::Profile {
            seconds,
            output,
            format,
            hz,
        }) => Some((*seconds, output.clone(), format.clone(), *hz)),
        _ => None,
    };
    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            print_error(&e.to_string());
            std::process::exit(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        print_error(&e);
        std::process::exit(2);
    }
    raise_fd_limit();
    if let Some((seconds, output, format, hz)) = profile_command {
        match profile_once(&config, seconds, hz, &output, &format) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                print_error(&e);
                std::process::exit(1);
            }
        }
    }
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A thread that left the workers (a push's encoding, a profile's capture, a database check)
        // waits this long for the next such job: longer than the idle interval and the usual push
        // interval, so a quiet sidecar does not start a thread (and map its stack) for each one.
        .thread_keep_alive(std::time::Duration::from_secs(120))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&format!("cannot start the async runtime: {e}"));
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

/// `vitals inject`: the options on its command line are checked as vitals would check them, then passed
/// to the sidecar. Exit 2 when the input is refused (nothing is written then), 1 when stdout fails.
fn inject(cli: Cli, args: vitals::inject::InjectArgs) -> i32 {
    use std::io::{Read, Write};
    let passed = cli.command_line_options.clone();
    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            print_error(&e.to_string());
            return 2;
        }
    };
    let mut input = String::new();
    let limit = vitals::inject::MAX_INPUT_BYTES;
    let read = if args.file == "-" {
        std::io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_string(&mut input)
    } else {
        std::fs::File::open(&args.file).and_then(|f| f.take(limit + 1).read_to_string(&mut input))
    };
    let name = if args.file == "-" {
        "standard input"
    } else {
        &args.file
    };
    if let Err(e) = read {
        print_error(&format!("{name}: {e}"));
        return 2;
    }
    if input.len() as u64 > limit {
        print_error(&format!("{name}: larger than {limit} bytes"));
        return 2;
    }
    let settings = vitals::inject::Settings {
        image: args.image,
        native: !args.legacy_sidecar,
        container: args.container,
        sidecar_args: passed.into_iter().chain(args.sidecar_args).collect(),
        metrics_port: config.metrics_addr.port(),
    };
    let mode = if args.uninject {
        vitals::inject::Mode::Uninject
    } else {
        vitals::inject::Mode::Inject
    };
    match vitals::inject::transform(&input, &settings, mode) {
        Ok(out) => {
            let mut err = std::io::stderr().lock();
            for n in &out.notes {
                let _ = writeln!(err, "{n}");
            }
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.output.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Ok(()) => 0,
                Err(e) => {
                    print_error(&format!("standard output: {e}"));
                    1
                }
            }
        }
        Err(e) => {
            print_error(&format!("{name}: {e}"));
            2
        }
    }
}

/// Installs the log subscriber: level filter, text or JSON, stderr or `--log-file`, colour only on a
/// terminal and never when `NO_COLOR` is set (https://no-color.org).
fn init_logging(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", config.log_level))?;
    let run_mode = matches!(config.target, Some(TargetSpec::Run { .. }));
    let sink = match &config.log_file {
        Some(path) => LogSink::file(path)?,
        None if run_mode && config.log_format == LogFormat::Text => LogSink::Stderr {
            prefix: RUN_MODE_PREFIX,
        },
        None => LogSink::Stderr { prefix: "" },
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = config.log_file.is_none() && std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one: containerd's default soft limit of 1024 would let
/// a thousand client connections starve `/metrics` and the probes of descriptors. Each listener also
/// caps its own connections, so the raised limit is a margin, not the bound. A `run` child gets the
/// limit vitals was started with back (see [`vitals::target::run::keep_child_nofile`]).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            vitals::target::run::keep_child_nofile(soft, hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// Keeps glibc to two malloc arenas. By default every thread that allocates may get its own arena (up to
/// 8 per core), and memory freed in one is not reused by another: scrapes rendered on tokio's blocking
/// threads and requests decoded on its workers then leave RSS at the sum of every arena's peak (110 MiB
/// under steady 30,000-series scrapes, 67 MiB with two arenas; debug build). A sidecar's budget needs the smaller.
/// It also fixes the mmap threshold at 256 KiB: glibc otherwise raises it to the size of each large block
/// freed, so after the first scrape its multi-megabyte exposition buffers came from the arenas and left
/// them fragmented (RSS +73% over 100 scrapes of 30,000 series); mapped, they go back to the kernel.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// `vitals profile`: one CPU profile of `--pid`, written to `output` (`-` for stdout).
fn profile_once(
    config: &Config,
    seconds: u64,
    hz: u64,
    output: &std::path::Path,
    format: &str,
) -> Result<(), String> {
    use std::io::Write;
    use vitals::profile::{pprof, Profiler, ProfilerSettings};
    let Some(TargetSpec::Select(Selection::Pid(pid))) = config.target else {
        return Err("vitals profile needs --pid PID".to_owned());
    };
    if !matches!(format, "pprof" | "folded") {
        return Err(format!("--format {format:?}: give pprof or folded"));
    }
    let settings = ProfilerSettings {
        enabled: true,
        stack_bytes: config.profile_stack_bytes,
        proc_root: config.proc_root.clone(),
        max_duration: std::time::Duration::from_secs(3600),
        ..ProfilerSettings::default()
    };
    let profiler = Profiler::new(settings, std::sync::Arc::new(move || vec![pid]));
    let (reason, _) = profiler.check();
    if !reason.can_profile() {
        return Err(format!("pid {pid}: {}", reason.advice()));
    }
    if reason == vitals::profile::Reason::NoKernelFrames {
        tracing::warn!("{}", reason.advice());
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let profile = profiler
        .take_at(std::time::Duration::from_secs(seconds), Some(hz), &stop)
        .map_err(|e| format!("pid {pid}: {e}"))?;
    let bytes = match format {
        "folded" => pprof::to_folded(&profile).into_bytes(),
        _ => pprof::to_pprof_gzip(&profile),
    };
    let written = if output.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)
    } else {
        std::fs::write(output, &bytes)
    };
    written.map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    tracing::info!(
        samples = profile.samples,
        notes = ?profile.notes,
        "profile of pid {pid} written to {}",
        output.display()
    );
    Ok(())
}

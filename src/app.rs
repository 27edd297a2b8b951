//! Wiring for the binary: build the store, start the sampler and the HTTP server, handle signals and, in
//! `run` mode, the child's lifetime. Returns the process exit code.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TargetSpec};
use crate::export::http::{bind, serve, HttpState};
use crate::export::self_metrics::ExporterStats;
use crate::sampler::Sampler;
use crate::source::cgroup::CgroupRoots;
use crate::source::procfs::{kernel_units, read_boot_time, PssPolicy};
use crate::store::target::{KernelUnits, TargetStore};
use crate::store::Registry;
use crate::target::{run, Selector};

/// Runs vitals until SIGTERM/SIGINT (or, in `run` mode, until the child exits). Returns the exit code.
pub async fn run(config: Config) -> anyhow::Result<i32> {
    let (hz, page_size) = kernel_units();
    let boot_time = read_boot_time(&config.proc_root)
        .map_err(|e| anyhow::anyhow!("--proc-root {}: {e}", config.proc_root.display()))?;
    let units = KernelUnits {
        hz,
        page_size,
        boot_time,
    };

    let registry = Registry::new();
    let stats = Arc::new(ExporterStats::new(hz, page_size));
    let store = Arc::new(TargetStore::new(units));
    registry.register(store.clone());
    registry.register(stats.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();

    let listener = bind(config.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let http = tokio::spawn(serve(
        listener,
        HttpState {
            registry: registry.clone(),
            ready: ready.clone(),
        },
        shutdown.clone(),
    ));

    let mut child = None;
    let selector = match &config.target {
        None => None,
        Some(TargetSpec::Pid(p)) => Some(Selector::Pid(*p)),
        Some(TargetSpec::PidFile(f)) => Some(Selector::PidFile(f.clone())),
        Some(TargetSpec::Process(re)) => Some(Selector::Process(re.clone())),
        Some(TargetSpec::Run { command, protocol }) => {
            let env = run::otlp_env(config.otlp_grpc_addr, config.otlp_http_addr, *protocol);
            let c = run::spawn(command, &env)?;
            let pid = c
                .id()
                .ok_or_else(|| anyhow::anyhow!("child exited before its pid was known"))?;
            tracing::info!(pid, command = ?command, "started child");
            child = Some(c);
            Some(Selector::Child(pid))
        }
    };
    let sampler_task = match selector {
        Some(sel) => {
            let roots = CgroupRoots {
                proc_root: config.proc_root.clone(),
                host_root: config.cgroup_root.clone(),
            };
            let pss = config.pss.then(PssPolicy::default);
            let sampler =
                Sampler::new(sel, roots, pss, store.clone(), stats.clone(), ready.clone());
            Some(tokio::spawn(sampler.run(config.interval, shutdown.clone())))
        }
        None => {
            tracing::info!("no target selected: serving exporter metrics only");
            ready.store(true, std::sync::atomic::Ordering::Release);
            None
        }
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let code = match child.as_mut() {
        Some(c) => {
            let pid = c.id().unwrap_or(0);
            loop {
                tokio::select! {
                    status = c.wait() => {
                        let code = match status {
                            Ok(s) => run::exit_code(s),
                            Err(e) => {
                                tracing::error!(error = %e, "lost track of the child");
                                1
                            }
                        };
                        tracing::info!(code, "child exited");
                        break code;
                    }
                    _ = sigterm.recv() => run::forward(pid, Signal::SIGTERM),
                    _ = sigint.recv() => run::forward(pid, Signal::SIGINT),
                    _ = sighup.recv() => run::forward(pid, Signal::SIGHUP),
                    _ = sigquit.recv() => run::forward(pid, Signal::SIGQUIT),
                }
            }
        }
        None => {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            }
            0
        }
    };
    shutdown.cancel();
    let stop = async {
        let _ = http.await;
        if let Some(t) = sampler_task {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(1), stop)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 1s; exiting anyway");
    }
    Ok(code)
}

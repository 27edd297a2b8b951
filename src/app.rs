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
use crate::sampler::{Sampler, SamplerParts};
use crate::signal::latency::RedStore;
use crate::signal::memory::MemoryGrowth;
use crate::signal::Derived;
use crate::source::cgroup::CgroupRoots;
use crate::source::otlp::{self, Ingest, OtlpLimits};
use crate::source::procfs::{kernel_units, read_boot_time, PssPolicy};
use crate::store::app_metrics::{AppMetrics, AppMetricsConfig};
use crate::store::limited::OverflowCounter;
use crate::store::logs::LogCounts;
use crate::store::target::{KernelUnits, TargetStore};
use crate::store::Registry;
use crate::target::{run, Selector};

/// Distinct app metric names kept; a runaway app cannot create families without bound.
const FAMILY_LIMIT: usize = 2000;

async fn bind_named(
    addr: std::net::SocketAddr,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {flag} {addr}: {e}"))
}

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

    let web = match &config.web_config_file {
        Some(path) => Some(Arc::new(crate::export::web_config::WebConfig::load(path)?)),
        None => None,
    };
    let listener = bind(config.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let http = tokio::spawn(serve(
        listener,
        HttpState {
            registry: registry.clone(),
            ready: ready.clone(),
            web,
        },
        shutdown.clone(),
    ));

    // The OTLP receiver and the stores it feeds.
    let overflow = OverflowCounter::default();
    let red = Arc::new(RedStore::new(
        config.series_limit,
        config.series_ttl,
        overflow.clone(),
    ));
    let app_metrics = Arc::new(AppMetrics::new(
        AppMetricsConfig {
            series_limit: config.series_limit,
            family_limit: FAMILY_LIMIT,
            ttl: config.series_ttl,
            promote: config.promote_resource_attributes.clone(),
        },
        overflow.clone(),
    ));
    let logs = Arc::new(LogCounts::new(
        config.series_limit,
        config.series_ttl,
        overflow.clone(),
    ));
    let otlp_stats = Arc::new(Ingest::stats_with(overflow));
    registry.register(red.clone());
    registry.register(app_metrics.clone());
    let app_metrics_for_signals = app_metrics.clone();
    registry.register(logs.clone());
    registry.register(otlp_stats.clone());
    let limits = OtlpLimits::new(
        config.otlp_max_request_bytes,
        config.otlp_max_concurrent_requests,
    );
    let ingest = Arc::new(Ingest::new(limits, red, app_metrics, logs, otlp_stats));
    let app_metrics = app_metrics_for_signals;
    let grpc_listener = bind_named(config.otlp_grpc_addr, "--otlp-grpc-addr").await?;
    let http_listener = bind_named(config.otlp_http_addr, "--otlp-http-addr").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "OTLP receiver listening");
    let otlp_grpc = tokio::spawn(otlp::grpc::serve(
        grpc_listener,
        ingest.clone(),
        shutdown.clone(),
    ));
    let otlp_http = tokio::spawn(otlp::http::serve(http_listener, ingest, shutdown.clone()));

    let mut child = None;
    let selector = match &config.target {
        None => None,
        Some(TargetSpec::Pid(p)) => Some(Selector::Pid(*p)),
        Some(TargetSpec::PidFile(f)) => Some(Selector::PidFile(f.clone())),
        Some(TargetSpec::Process(re)) => Some(Selector::Process(re.clone())),
        Some(TargetSpec::Run { command, protocol }) => {
            let env = run::otlp_env(grpc_addr, http_addr, *protocol);
            let c = run::spawn(command, &env)?;
            let pid = c
                .id()
                .ok_or_else(|| anyhow::anyhow!("child exited before its pid was known"))?;
            tracing::info!(pid, command = ?command, "started child");
            child = Some(c);
            Some(Selector::Child(pid))
        }
    };
    let derived = Arc::new(Derived::new(
        app_metrics.clone(),
        MemoryGrowth::new(&config.growth_windows, config.leak_threshold),
    ));
    registry.register(derived.pause.clone());
    registry.register(derived.memory.clone());
    registry.register(derived.pool.clone());
    if selector.is_none() {
        tracing::info!(
            "no target selected: serving OTLP-derived signals and exporter metrics only"
        );
    }
    let roots = CgroupRoots {
        proc_root: config.proc_root.clone(),
        host_root: config.cgroup_root.clone(),
    };
    let parts = SamplerParts {
        store: store.clone(),
        stats: stats.clone(),
        ready: ready.clone(),
        derived,
        app: app_metrics,
        units,
    };
    let sampler = Sampler::new(selector, roots, config.pss.then(PssPolicy::default), parts);
    let sampler_task = Some(tokio::spawn(sampler.run(config.interval, shutdown.clone())));

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
        let _ = otlp_grpc.await;
        let _ = otlp_http.await;
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

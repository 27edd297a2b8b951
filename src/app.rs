//! Wiring for the binary: build the store, start the sampler and the HTTP server, handle signals and, in
//! `run` mode, the child's lifetime. Returns the process exit code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::cadence::Cadence;
use crate::config::{ChildProtocol, Config, TargetSpec};
use crate::export::http::live::{self, LiveHub};
use crate::export::http::server::{ConnectionLimits, GuardedListener};
use crate::export::http::{bind, serve, HttpState};
use crate::export::otlp::forward::Forwarder;
use crate::export::otlp::push::Pusher;
use crate::export::self_metrics::ExporterStats;
use crate::model::{Attributed, Collector, Registry};
use crate::probe::cgroup::CgroupRoots;
use crate::probe::procfs::{kernel_units, read_boot_time, PssPolicy};
use crate::profile::continuous::{Continuous, ContinuousSettings};
use crate::profile::{Profiler, ProfilerSettings, Reason};
use crate::receiver::{self, Consumers, OtlpLimits, OtlpStats, Receiver};
use crate::sampler::{Sampler, SamplerParts, WATCH_INTERVAL};
use crate::signal::hints::HintPolicy;
use crate::signal::latency::RedStore;
use crate::signal::memory::MemoryGrowth;
use crate::signal::n_plus_one::{NPlusOne, Rule};
use crate::signal::query::{DbQueries, QueryStore};
use crate::signal::runtime_metrics::RuntimeMetrics;
use crate::signal::target::{KernelUnits, TargetMetrics};
use crate::signal::Derived;
use crate::store::app_metrics::{AppMetrics, AppMetricsConfig};
use crate::store::limited::OverflowCounter;
use crate::store::logs::LogCounts;
use crate::target::pod::PodScan;
use crate::target::status::TargetStatus;
use crate::target::{run, Selector};

/// Distinct app metric names kept; a runaway app cannot create families without bound.
const FAMILY_LIMIT: usize = 2000;

/// How often the stores drop series past their TTL (readers already skip them; this frees the memory):
/// a thirtieth of the TTL, between 2 s and a minute. The default hour's TTL frees a series at most a
/// minute late, and an idle sidecar wakes once a minute for it rather than every 2 s.
fn expiry_period(ttl: Duration) -> Duration {
    (ttl / 30).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// Drops expired series from the stores (and the query and N+1 series) every `period` until `shutdown`.
async fn expire_every(
    period: Duration,
    red: Arc<RedStore>,
    app: Arc<AppMetrics>,
    logs: Arc<LogCounts>,
    db: Arc<DbQueries>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = std::time::Instant::now();
        red.expire(now);
        app.expire(now);
        logs.expire(now);
        db.store.expire(now);
        // Also forgets N+1 counter series past their TTL while no trace waits to be judged.
        db.n_plus_one.settle(now);
    }
}

/// How often the profiler looks for a target to check whether it may profile it, until it has checked
/// one; then [`PROFILER_RECHECK_PERIOD`] (a restarted target's new instance is checked that much later).
const PROFILER_CHECK_PERIOD: Duration = Duration::from_secs(2);
const PROFILER_RECHECK_PERIOD: Duration = Duration::from_secs(15);

/// The CPU profiler of the sampler's current target, registered for its status series, with a task
/// that checks it may profile each new target and warns, naming the fix, when it may not.
fn start_profiler(
    config: &Config,
    store: &Arc<TargetMetrics>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Arc<Profiler> {
    let target = store.clone();
    // The target's whole tree: a pre-fork server's workers and a launcher's runtime are where the time goes.
    let pids = Arc::new(move || target.member_pids());
    let profiler = Arc::new(Profiler::new(
        ProfilerSettings {
            enabled: config.profiling,
            stack_bytes: config.profile_stack_bytes,
            proc_root: config.proc_root.clone(),
            ..ProfilerSettings::default()
        },
        pids,
    ));
    registry.register(profiler.clone());
    if !config.profiling {
        return profiler;
    }
    let (p, target, shutdown) = (profiler.clone(), store.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut checked = None;
        loop {
            let period = if checked.is_some() {
                PROFILER_RECHECK_PERIOD
            } else {
                PROFILER_CHECK_PERIOD
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let pid = target.info().map(|i| i.pid);
            if pid.is_none() || pid == checked {
                continue;
            }
            checked = pid;
            let q = p.clone();
            let Ok((reason, _)) = tokio::task::spawn_blocking(move || q.check()).await else {
                continue;
            };
            if reason == Reason::Ok {
                tracing::info!(
                    "CPU profiles of pid {} at /debug/pprof/profile",
                    pid.unwrap_or(0)
                );
            } else {
                tracing::warn!("{}", reason.advice());
            }
        }
    });
    profiler
}

/// The continuous profiler, when configured: sampling on a thread of its own until `shutdown`, its
/// ring and captures registered for their series.
fn start_continuous(
    config: &Config,
    profiler: &Arc<Profiler>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Option<Arc<Continuous>> {
    let c = config.profile_continuous.as_ref()?;
    let continuous = Arc::new(Continuous::new(
        profiler.clone(),
        ContinuousSettings {
            hz: c.hz,
            ring_bytes: usize::try_from(c.ring_bytes).unwrap_or(usize::MAX),
            window: c.window,
        },
    ));
    registry.register(continuous.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (runner, flag) = (continuous.clone(), stop.clone());
    let started = std::thread::Builder::new()
        .name("vitals-continuous-profile".into())
        .spawn(move || runner.run(&flag));
    if let Err(e) = started {
        tracing::warn!("continuous profiling is off: cannot start its thread: {e}");
        return None;
    }
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    tracing::info!(
        "continuous CPU profile at {} Hz, ring of {} bytes over {:?}; captures at /debug/pprof/captures",
        c.hz,
        c.ring_bytes,
        c.window
    );
    Some(continuous)
}

/// How often N+1 detection judges the traces that settled, while any wait.
const DB_SETTLE_PERIOD: Duration = Duration::from_millis(500);

/// Judges settled traces for N+1 runs every `period` while any wait to be judged, sleeping until a span
/// arrives otherwise, until `shutdown`.
async fn settle_db_every(period: Duration, db: Arc<DbQueries>, shutdown: CancellationToken) {
    loop {
        let judging = db.n_plus_one.judging();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period), if judging => {}
            // Nothing to judge: sleep until a span is held (not every settling period).
            _ = db.n_plus_one.arrival(), if !judging => {}
        }
        db.n_plus_one.settle(std::time::Instant::now());
    }
}

async fn bind_named(
    addr: std::net::SocketAddr,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    crate::export::http::server::listen(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {flag} {addr}: {e}"))
}

/// Runs vitals until SIGTERM/SIGINT (or, in `run` mode, until the child exits). Returns the exit code.
pub async fn run(config: Config) -> anyhow::Result<i32> {
    // Handlers first: from here on SIGTERM/SIGINT/SIGHUP/SIGQUIT never kill vitals, so a signal that
    // arrives while the child is being started is forwarded instead of orphaning the child.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
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
    let store = Arc::new(TargetMetrics::new(units).with_info_labels(kubernetes_labels(&config)));
    // With no selector there is no main target: no `vitals_target_up 0` to page anyone (in a pod, each
    // container is a target of its own).
    if config.target.is_some() {
        register_target(&registry, config.target_name.as_deref(), store.clone());
    }
    registry.register(stats.clone());
    let status = Arc::new(TargetStatus::default());
    let shutdown = CancellationToken::new();
    // Readings every --interval while anyone watches, every idle interval otherwise, fresh for each
    // scrape and push.
    let cadence = Cadence::new(config.interval, config.idle_interval);

    let selected_by = match &config.target {
        None => "none selected".to_owned(),
        Some(TargetSpec::Pid(p)) => format!("--pid {p}"),
        Some(TargetSpec::PidFile(f)) => format!("--pid-file {}", f.display()),
        Some(TargetSpec::Process(re)) => format!("--process {re}"),
        Some(TargetSpec::Run { .. }) => "vitals run (child process)".to_owned(),
    };
    let live = Arc::new(LiveHub::new(
        HintPolicy {
            min_history_seconds: config.hints_min_history.as_secs_f64(),
            ..HintPolicy::default()
        },
        selected_by,
        otlp_sentence(config.otlp_http_addr, config.otlp_grpc_addr),
        shutdown.clone(),
    ));
    registry.register(live.hints.clone());
    tracing::debug!(bytes = live.history_bytes(), "live history allocated");
    let sampled = Arc::new(tokio::sync::Notify::new());
    let live_task = tokio::spawn(live::run(
        live.clone(),
        registry.clone(),
        sampled.clone(),
        shutdown.clone(),
    ));

    let web = match &config.web_config_file {
        Some(path) => Some(Arc::new(crate::export::http::web_config::WebConfig::load(
            path,
        )?)),
        None => None,
    };
    let profiler = start_profiler(&config, &store, &registry, &shutdown);
    let continuous = start_continuous(&config, &profiler, &registry, &shutdown);
    if let Some(c) = &continuous {
        live.capture_on_trouble(c.clone());
    }
    live.pace(cadence.clone());
    let listener = bind(config.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let http = tokio::spawn(serve(
        listener,
        HttpState {
            registry: registry.clone(),
            status: status.clone(),
            live: Some(live),
            web,
            profiler: Some(profiler),
            continuous,
            cadence: Some(cadence.clone()),
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
        // The stores refuse at ingest what the Prometheus exposition could not write apart.
        Arc::new(crate::export::prometheus::naming::PrometheusNames),
    ));
    let logs = Arc::new(LogCounts::new(
        config.series_limit,
        config.series_ttl,
        overflow.clone(),
    ));
    // Database queries: latency per query template and N+1 runs, from the same trace exports.
    let db = Arc::new(DbQueries {
        store: Arc::new(QueryStore::new(
            config.series_limit,
            config.series_ttl,
            overflow.clone(),
        )),
        n_plus_one: Arc::new(NPlusOne::new(
            Rule {
                settle: config.db_trace_settle,
                ..Rule::default()
            },
            config.series_limit,
            config.series_ttl,
            overflow.clone(),
        )),
    });
    registry.register(db.store.clone());
    registry.register(db.n_plus_one.clone());
    tokio::spawn(settle_db_every(
        DB_SETTLE_PERIOD,
        db.clone(),
        shutdown.clone(),
    ));
    // Expiry runs on its own clock, so a scrape only reads the stores.
    tokio::spawn(expire_every(
        expiry_period(config.series_ttl),
        red.clone(),
        app_metrics.clone(),
        logs.clone(),
        db.clone(),
        shutdown.clone(),
    ));
    let otlp_stats = Arc::new(OtlpStats::new(move || overflow.get()));
    registry.register(red.clone());
    registry.register(app_metrics.clone());
    registry.register(logs.clone());
    registry.register(otlp_stats.clone());
    let limits = OtlpLimits::new(
        config.otlp_max_request_bytes,
        config.otlp_max_concurrent_requests,
    );
    // Runtime metrics for derivation are picked as they arrive, apart from the app metric store.
    let runtime_metrics = Arc::new(RuntimeMetrics::new(config.series_ttl));
    // Forwarding takes each request first, so a full queue answers the app before anything is
    // derived; then RED, the runtime metrics derivation reads, app metrics and log counts.
    let mut consumers = Consumers::new();
    let forwarder = match &config.forward {
        Some(settings) => {
            let f = Forwarder::start(settings.clone()).map_err(|e| anyhow::anyhow!(e))?;
            registry.register(f.collector());
            consumers = consumers.onward(f.clone());
            Some(f)
        }
        None => None,
    };
    let consumers = consumers
        .traces(red)
        .traces(db)
        .metrics(runtime_metrics.clone())
        .metrics(app_metrics)
        .logs(logs);
    let otlp_receiver = Arc::new(Receiver::new(limits, consumers, otlp_stats));
    // Push of vitals' own metrics over OTLP: it reads the same registry as /metrics (the app's own
    // metrics in it are left out by the pusher; they leave through forwarding) and adds its counters.
    let pusher = match &config.push {
        Some(settings) => {
            let p = Pusher::start(settings.clone(), registry.clone(), Some(cadence.clone()))
                .map_err(anyhow::Error::msg)?;
            registry.register(p.collector());
            Some(p)
        }
        None => None,
    };
    let grpc_listener = match config.otlp_grpc_addr {
        Some(a) => Some(bind_named(a, "--otlp-grpc-addr").await?),
        None => None,
    };
    let http_listener = match config.otlp_http_addr {
        Some(a) => Some(bind_named(a, "--otlp-http-addr").await?),
        None => None,
    };
    let grpc_addr = grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let shown = |a: Option<std::net::SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
    tracing::info!(grpc = %shown(grpc_addr), http = %shown(http_addr), "OTLP receiver listening");
    let mut receivers = Vec::new();
    // The receiver speaks OTLP; the shared server accepts its connections within the OTLP limits
    // (and sets TCP_NODELAY: small unary answers must not wait on Nagle plus delayed ACK, 4-5 ms per
    // request otherwise).
    if let Some(l) = grpc_listener {
        let incoming = GuardedListener::new(l, ConnectionLimits::OTLP).into_stream("otlp-grpc");
        receivers.push(tokio::spawn(receiver::grpc::serve(
            incoming,
            otlp_receiver.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(l) = http_listener {
        receivers.push(tokio::spawn(crate::export::http::server::serve(
            l,
            ConnectionLimits::OTLP,
            None,
            "otlp-http",
            move |req| receiver::http::handle(otlp_receiver.clone(), req),
            shutdown.clone(),
        )));
    }

    let mut child = None;
    let selector = match &config.target {
        None => None,
        Some(TargetSpec::Pid(p)) => Some(Selector::Pid(*p)),
        Some(TargetSpec::PidFile(f)) => Some(Selector::PidFile(f.clone())),
        Some(TargetSpec::Process(re)) => Some(Selector::Process(re.clone())),
        Some(TargetSpec::Run { command, protocol }) => {
            let env = match (protocol, grpc_addr, http_addr) {
                (ChildProtocol::Grpc, Some(grpc), _) => run::otlp_env(grpc, grpc, *protocol),
                (ChildProtocol::HttpProtobuf, _, Some(http)) => {
                    run::otlp_env(http, http, *protocol)
                }
                _ => {
                    tracing::warn!(
                        protocol = ?protocol,
                        "the receiver for the child's OTLP protocol is off; the child's OTEL_EXPORTER_OTLP_* \
                         variables are left as they are"
                    );
                    Vec::new()
                }
            };
            let terminal = run::in_terminal();
            let c = match run::spawn(command, &env, terminal) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    shutdown.cancel();
                    return Ok(e.exit_code);
                }
            };
            let pid = c
                .id()
                .ok_or_else(|| anyhow::anyhow!("child exited before its pid was known"))?;
            tracing::info!(pid, command = ?command, terminal, "started child");
            child = Some((c, terminal));
            Some(Selector::Child(pid))
        }
    };
    let derived = Arc::new(Derived::new(
        runtime_metrics,
        MemoryGrowth::new(&config.growth_windows, config.leak_threshold),
    ));
    let main_name = config.target_name.as_deref();
    register_target(&registry, main_name, derived.pause.clone());
    register_target(&registry, main_name, derived.memory.clone());
    register_target(&registry, main_name, derived.pool.clone());
    let no_selector = selector.is_none();
    if no_selector {
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
        status: status.clone(),
        derived,
        units,
        sampled,
    };
    let sampler = Sampler::new(
        selector,
        roots,
        config.pss.then(PssPolicy::default),
        config.max_tree_processes,
        parts,
    );
    let sampler_task = Some(tokio::spawn(sampler.run(cadence.join(), shutdown.clone())));
    let wiring = TargetWiring {
        registry: registry.clone(),
        stats: stats.clone(),
        units,
        shutdown: shutdown.clone(),
        cadence: cadence.clone(),
    };
    let mut more_tasks = start_more_targets(&config, &wiring);
    if no_selector && config.more_targets.is_empty() {
        if let Some(init) = crate::target::pod::sandbox(&config.proc_root) {
            tracing::info!(pid_1 = %init, "no target selected in a pod that shares its process namespace: \
                watching every other container's process tree (name targets with --target to choose)");
            more_tasks.push(start_pod_targets(&config, &wiring));
        }
    }

    let code = match child.as_mut() {
        Some((c, terminal)) => {
            wait_for_child(
                c,
                *terminal,
                &mut sigterm,
                &mut sigint,
                &mut sighup,
                &mut sigquit,
            )
            .await
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
        for r in receivers {
            let _ = r.await;
        }
        let _ = live_task.await;
        for t in more_tasks {
            let _ = t.await;
        }
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
    // The receivers have stopped taking requests; what they accepted goes upstream within the grace.
    // The final push runs beside the drain, both within --forward-drain-timeout.
    let drain = async {
        if let Some(f) = forwarder {
            f.drain().await;
        }
    };
    let final_push = async {
        if let Some(p) = &pusher {
            p.finish().await;
        }
    };
    tokio::join!(drain, final_push);
    Ok(code)
}

/// With `--kubernetes-labels`, the pod's names from the Downward API variables as labels of
/// `vitals_target_info` (`k8s_namespace_name`, `k8s_pod_name`, `k8s_node_name`), the ones that are set.
fn kubernetes_labels(config: &Config) -> Vec<(String, String)> {
    if !config.kubernetes_labels {
        return Vec::new();
    }
    let wanted = ["k8s.namespace.name", "k8s.pod.name", "k8s.node.name"];
    crate::export::otlp::push_resource::KUBERNETES_VARIABLES
        .iter()
        .filter(|(_, attribute)| wanted.contains(attribute))
        .filter_map(|(variables, attribute)| {
            let value = variables
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|x| !x.trim().is_empty()))?;
            let value: String = value.trim().chars().take(253).collect();
            Some((attribute.replace('.', "_"), value))
        })
        .collect()
}

/// Registers a target's collector, its points labelled `target="NAME"` when the target has a name.
fn register_target(registry: &Registry, name: Option<&str>, collector: Arc<dyn Collector>) {
    match name {
        Some(n) => registry.register(Arc::new(Attributed::new(collector, "target", n))),
        None => registry.register(collector),
    }
}

/// Starts a sampler for each further named target (`--target NAME=SPEC` after the first).
fn start_more_targets(config: &Config, wiring: &TargetWiring) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for t in &config.more_targets {
        let selector = match &t.spec {
            TargetSpec::Pid(p) => Selector::Pid(*p),
            TargetSpec::PidFile(f) => Selector::PidFile(f.clone()),
            TargetSpec::Process(re) => Selector::Process(re.clone()),
            // The config never names a `run` child among the further targets.
            TargetSpec::Run { .. } => continue,
        };
        tracing::info!(target = %t.name, selector = %selector.describe(), "watching a further target");
        tasks.push(start_named_target(config, wiring, &t.name, selector));
    }
    tasks
}

/// Starts the sampler of a named target that is not the main one: its own store, pauses from hsperfdata,
/// memory growth and pools, every family labelled with its name. The app's OTLP data belongs to the main
/// target, so these derive from their probes alone.
fn start_named_target(
    config: &Config,
    wiring: &TargetWiring,
    name: &str,
    selector: Selector,
) -> tokio::task::JoinHandle<()> {
    let (registry, units) = (&wiring.registry, wiring.units);
    let store = Arc::new(TargetMetrics::new(units).with_info_labels(kubernetes_labels(config)));
    register_target(registry, Some(name), store.clone());
    // No OTLP consumer feeds this: the app's runtime metrics are the main target's.
    let unfed = Arc::new(RuntimeMetrics::new(config.series_ttl));
    let derived = Arc::new(Derived::new(
        unfed,
        MemoryGrowth::new(&config.growth_windows, config.leak_threshold),
    ));
    register_target(registry, Some(name), derived.pause.clone());
    register_target(registry, Some(name), derived.memory.clone());
    register_target(registry, Some(name), derived.pool.clone());
    let parts = SamplerParts {
        store,
        stats: wiring.stats.clone(),
        status: Arc::new(TargetStatus::default()),
        derived,
        units,
        sampled: Arc::new(tokio::sync::Notify::new()),
    };
    let sampler = Sampler::new(
        Some(selector),
        CgroupRoots {
            proc_root: config.proc_root.clone(),
            host_root: config.cgroup_root.clone(),
        },
        config.pss.then(PssPolicy::default),
        config.max_tree_processes,
        parts,
    );
    tokio::spawn(sampler.run(wiring.cadence.join(), wiring.shutdown.clone()))
}

/// What every further target's sampler is connected to.
#[derive(Clone)]
struct TargetWiring {
    registry: Registry,
    stats: Arc<ExporterStats>,
    units: KernelUnits,
    shutdown: CancellationToken,
    cadence: Arc<Cadence>,
}

/// Zero-configuration pod mode (see [`crate::target::pod`]): scans for the pod's containers every
/// [`WATCH_INTERVAL`] and starts a target for each, named after its program. Runs until shutdown.
fn start_pod_targets(config: &Config, wiring: &TargetWiring) -> tokio::task::JoinHandle<()> {
    let config = config.clone();
    let wiring = wiring.clone();
    let shutdown = wiring.shutdown.clone();
    tokio::spawn(async move {
        let mut scan = PodScan::new(&config.proc_root);
        let mut tasks = Vec::new();
        let mut failed = false;
        let mut every = tokio::time::interval(WATCH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            match scan.scan() {
                Ok(new) => {
                    failed = false;
                    for slot in new {
                        let name = slot.name().to_owned();
                        tasks.push(start_named_target(
                            &config,
                            &wiring,
                            &name,
                            Selector::Container(slot),
                        ));
                    }
                }
                Err(e) if !failed => {
                    failed = true;
                    tracing::warn!(error = %e, "cannot list the pod's processes; retrying");
                }
                Err(_) => {}
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    })
}

/// How long a child may ignore a forwarded signal before vitals says so again.
const CHILD_STILL_RUNNING_NOTICE: Duration = Duration::from_secs(10);

/// Waits for the child, forwarding signals, and returns its exit code. In a terminal, SIGINT and SIGQUIT
/// come from the keyboard and the terminal already delivered them to the child (same process group), so
/// they are not sent twice; vitals survives them and keeps waiting.
async fn wait_for_child(
    c: &mut tokio::process::Child,
    terminal: bool,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
    sighup: &mut tokio::signal::unix::Signal,
    sigquit: &mut tokio::signal::unix::Signal,
) -> i32 {
    let pid = c.id().unwrap_or(0);
    // The child's group and start, to name what it leaves running when it exits.
    let pgrp = if terminal {
        nix::unistd::getpgrp().as_raw().unsigned_abs()
    } else {
        pid
    };
    let start_ticks =
        crate::target::identify(std::path::Path::new("/proc"), pid).map_or(0, |t| t.start_ticks);
    let mut forwarded_at: Option<tokio::time::Instant> = None;
    loop {
        let notice = async {
            match forwarded_at {
                Some(t) => tokio::time::sleep_until(t + CHILD_STILL_RUNNING_NOTICE).await,
                None => std::future::pending().await,
            }
        };
        let sent = tokio::select! {
            status = c.wait() => {
                let (code, how) = match status {
                    Ok(s) => (run::exit_code(s), run::describe_exit(s)),
                    Err(e) => {
                        tracing::error!(error = %e, "lost track of the child");
                        (1, "unknown".into())
                    }
                };
                tracing::info!(code, %how, "child exited; vitals exits with its code");
                // Processes that got the same signal may take a moment longer than the child to end.
                let mut left = run::leftovers(std::path::Path::new("/proc"), pgrp, start_ticks);
                for _ in 0..20 {
                    if left.is_empty() || forwarded_at.is_none() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    left = run::leftovers(std::path::Path::new("/proc"), pgrp, start_ticks);
                }
                if !left.is_empty() {
                    tracing::warn!(processes = ?left, "the child exited but processes it started are still \
                        running (they left its process group's signals behind or outlived it); end them \
                        with kill");
                }
                return code;
            }
            _ = notice => {
                tracing::warn!(pid, "the child is still running {}s after the forwarded signal; \
                    vitals waits for it (send SIGKILL to pid {pid} to force it)",
                    CHILD_STILL_RUNNING_NOTICE.as_secs());
                forwarded_at = None;
                continue;
            }
            _ = sigterm.recv() => Signal::SIGTERM,
            _ = sighup.recv() => Signal::SIGHUP,
            _ = sigint.recv() => Signal::SIGINT,
            _ = sigquit.recv() => Signal::SIGQUIT,
        };
        if terminal && matches!(sent, Signal::SIGINT | Signal::SIGQUIT) {
            tracing::info!(
                signal = sent.as_str(),
                "the terminal sent this to the child as well; waiting for it to exit"
            );
        } else {
            run::forward(pid, sent, !terminal);
        }
        forwarded_at = Some(tokio::time::Instant::now());
    }
}

/// The live page's sentence that tells how an app's SDK reaches vitals' receivers, or that it cannot.
fn otlp_sentence(http: Option<SocketAddr>, grpc: Option<SocketAddr>) -> String {
    const RUN: &str = "or use \"vitals run -- CMD\", which sets it.";
    match (http, grpc) {
        (Some(http), Some(grpc)) => format!(
            "Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://{http} (for gRPC: \
             OTEL_EXPORTER_OTLP_ENDPOINT=http://{grpc} OTEL_EXPORTER_OTLP_PROTOCOL=grpc), {RUN}"
        ),
        (Some(http), None) => {
            format!("Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://{http}, {RUN}")
        }
        (None, Some(grpc)) => format!(
            "Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://{grpc} \
             OTEL_EXPORTER_OTLP_PROTOCOL=grpc, {RUN}"
        ),
        (None, None) => "The OTLP receivers are off (--otlp-grpc-addr and --otlp-http-addr are \
                         unset), so no spans can arrive."
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::otlp_sentence;

    #[test]
    fn the_page_sentence_reads_with_and_without_receivers() {
        let http = "127.0.0.1:4318".parse().ok();
        let grpc = "127.0.0.1:4317".parse().ok();
        assert_eq!(
            otlp_sentence(http, None),
            "Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318, or use \"vitals run \
             -- CMD\", which sets it."
        );
        assert_eq!(
            otlp_sentence(None, grpc),
            "Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
             OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or use \"vitals run -- CMD\", which sets it."
        );
        let off = otlp_sentence(None, None);
        assert_eq!(
            off,
            "The OTLP receivers are off (--otlp-grpc-addr and --otlp-http-addr are unset), so no \
             spans can arrive."
        );
        assert!(!off.contains("Start the app"));
    }
}

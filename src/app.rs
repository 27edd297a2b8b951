//! Assembly of the binary. [`run`] is the list of components it starts and how they connect: the core
//! every part shares (registry, main target's metrics, cadence, shutdown), the live page, the profilers, the
//! HTTP server, the OTLP stores and receiver (with forwarding and push), the main target's sampler (and
//! in `run` mode its child), the further targets; then it waits for the end and stops them in order.
//! Each component is built by a function of its own below. Returns the process exit code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bounded::OverflowCounter;
use crate::cadence::Cadence;
use crate::config::{Config, OtlpProtocol, Selection, TargetSpec};
use crate::export::http::live::{frame::HISTORY_READS, LiveHub};
use crate::export::http::{bind, serve, HttpState};
use crate::export::otlp::forward::Forwarder;
use crate::export::otlp::push::Pusher;
use crate::model::{Attributed, Collector, Registry};
use crate::probe::cgroup::CgroupRoots;
use crate::probe::own_health::ExporterStats;
use crate::probe::procfs::{kernel_units, read_boot_time, PssPolicy};
use crate::profile::continuous::{Continuous, ContinuousSettings};
use crate::profile::{Profiler, ProfilerSettings, Reason};
use crate::receiver::{self, Consumers, OtlpLimits, OtlpStats, Receiver};
use crate::sampler::{Sampler, SamplerParts, SamplingThread, WATCH_INTERVAL};
use crate::server::{ConnectionLimits, GuardedListener};
use crate::signal::hints::{HintPolicy, HintSignal};
use crate::signal::latency::RedSignal;
use crate::signal::memory::MemoryGrowth;
use crate::signal::n_plus_one::{NPlusOne, Rule};
use crate::signal::query::{DbQueries, QuerySignal};
use crate::signal::runtime_metrics::RuntimeMetrics;
use crate::signal::target::{KernelUnits, TargetMetrics};
use crate::signal::TickSignals;
use crate::store::app_metrics::{AppMetrics, AppMetricsConfig};
use crate::store::logs::LogCounts;
use crate::target::pod::PodScan;
use crate::target::status::TargetStatus;
use crate::target::{run, Selector};

/// Distinct app metric names kept; a runaway app cannot create families without bound.
const FAMILY_LIMIT: usize = 2000;

/// How often the stores drop series past their TTL (readers already skip them; this frees the memory):
/// a thirtieth of the TTL, between 2 s and a minute. The default hour's TTL frees a series at most a
/// minute late, and a sidecar holding series wakes once a minute for it rather than every 2 s (one
/// holding none does not wake for it at all: [`expire_every`]).
fn expiry_period(ttl: Duration) -> Duration {
    (ttl / 30).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// Drops expired series from the stores (and the query and N+1 series) every `period` while they hold
/// any, until `shutdown`. While they hold nothing (a sidecar whose app sends no OTLP, or whose last
/// series expired) no timer runs: the task sleeps until the receiver delivers a request (`delivered`),
/// so an idle sidecar does not wake for expiry (each such wake cost 60–200 µs of CPU a minute).
async fn expire_every(
    period: Duration,
    red: Arc<RedSignal>,
    app: Arc<AppMetrics>,
    logs: Arc<LogCounts>,
    db: Arc<DbQueries>,
    delivered: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = delivered.notified() => {}
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
            // A request delivered after these checks has left a permit: the outer wait returns at once.
            if !(red.holds()
                || app.holds()
                || logs.holds()
                || db.store.holds()
                || db.n_plus_one.holds())
            {
                break;
            }
        }
    }
}

/// The CPU profiler of the sampler's current target, registered for its status series, with a task
/// that checks it may profile each new target and warns, naming the fix, when it may not.
fn start_profiler(
    config: &Config,
    target_metrics: &Arc<TargetMetrics>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Arc<Profiler> {
    let target = target_metrics.clone();
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
    let (p, target, shutdown) = (profiler.clone(), target_metrics.clone(), shutdown.clone());
    // Checked at each attachment (a target attached before this task began counts): no timer while
    // the target lives.
    let mut attachments = target.attachments();
    attachments.mark_changed();
    tokio::spawn(async move {
        let mut checked = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = attachments.changed() => if changed.is_err() { return },
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
    crate::server::listen(addr).map_err(|e| anyhow::anyhow!("cannot listen on {flag} {addr}: {e}"))
}

/// Runs vitals until SIGTERM/SIGINT (or, in `run` mode, until the child exits). Returns the exit code.
///
/// The program is this list: each line starts one component and says what it is connected to.
pub async fn run(config: Config) -> anyhow::Result<i32> {
    // Handlers first: from here on SIGTERM/SIGINT/SIGHUP/SIGQUIT never kill vitals, so a signal that
    // arrives while the child is being started is forwarded instead of orphaning the child.
    let mut signals = Signals::install()?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let core = Core::new(&config)?;
    let mut tasks = Vec::new();
    let live = start_live(&config, &core, &mut tasks);
    let profiler = start_profiler(
        &config,
        &core.target_metrics,
        &core.registry,
        &core.shutdown,
    );
    let continuous = start_continuous(&config, &profiler, &core.registry, &core.shutdown);
    if let Some(c) = &continuous {
        live.capture_on_trouble(c.clone());
    }
    tasks.push(start_http(&config, &core, live, profiler, continuous).await?);
    let stores = OtlpStores::new(&config, &core);
    let forwarder = start_forwarder(&config, &core.registry)?;
    let pusher = start_pusher(&config, &core)?;
    let runtime_metrics = stores.runtime_metrics.clone();
    let receivers = start_receivers(&config, &core, stores, forwarder.clone(), &mut tasks).await?;
    let main = match start_main_target(&config, &core, receivers, runtime_metrics) {
        Ok(main) => main,
        Err(exit_code) => {
            core.shutdown.cancel();
            return Ok(exit_code);
        }
    };
    tasks.extend(main.sampler);
    tasks.extend(start_more_targets(&config, &core.wiring(), main.selected));
    // Started: the pages of code only start-up ran leave vitals' RSS (see `startup_pages`).
    match crate::startup_pages::release() {
        Ok(bytes) => tracing::debug!(bytes, "start-up code pages released"),
        Err(e) => tracing::debug!(error = %e, "cannot release start-up code pages"),
    }

    let code = match main.child {
        Some((mut c, terminal)) => wait_for_child(&mut c, terminal, &mut signals).await,
        None => signals.termination().await,
    };
    stop(core.shutdown, tasks, forwarder, pusher).await;
    Ok(code)
}

/// The signals vitals handles itself: termination, and the ones it forwards to a `run` child.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Waits for SIGTERM or SIGINT; the exit code is 0.
    async fn termination(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        0
    }
}

/// What every component is connected to: the registry every exporter reads, the main target's metrics,
/// the exporter's own counters, the target's state, the samplers' pace and the shutdown token.
struct Core {
    units: KernelUnits,
    registry: Registry,
    stats: Arc<ExporterStats>,
    /// The main target's metrics, from its probe readings.
    target_metrics: Arc<TargetMetrics>,
    status: Arc<TargetStatus>,
    /// Told after each reading of the main target, so the live page draws it at once.
    sampled: Arc<tokio::sync::Notify>,
    cadence: Arc<Cadence>,
    /// The thread the samplers and what follows each reading run on.
    sampling: Arc<SamplingThread>,
    shutdown: CancellationToken,
}

impl Core {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let (hz, page_size) = kernel_units();
        let boot_time = read_boot_time(&config.proc_root)
            .map_err(|e| anyhow::anyhow!("--proc-root {}: {e}", config.proc_root.display()))?;
        let units = KernelUnits {
            hz,
            page_size,
            boot_time,
        };
        let registry = Registry::new();
        let stats = Arc::new(ExporterStats::new(page_size));
        let target_metrics =
            Arc::new(TargetMetrics::new(units).with_info_labels(kubernetes_labels(config)));
        // With no selector there is no main target: no `vitals_target_up 0` to page anyone (in a pod,
        // each container is a target of its own).
        if config.target.is_some() {
            register_target(
                &registry,
                config.target_name.as_deref(),
                target_metrics.clone(),
            );
        }
        registry.register(stats.clone());
        let shutdown = CancellationToken::new();
        let sampling = SamplingThread::start(shutdown.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the sampling thread: {e}"))?;
        Ok(Self {
            units,
            registry,
            stats,
            target_metrics,
            status: Arc::new(TargetStatus::default()),
            sampled: Arc::new(tokio::sync::Notify::new()),
            // Readings every --interval while anyone watches, every idle interval otherwise, fresh for
            // each scrape and push.
            cadence: Cadence::new(config.interval, config.idle_interval),
            sampling: Arc::new(sampling),
            shutdown,
        })
    }

    /// What a further target's sampler is connected to.
    fn wiring(&self) -> TargetWiring {
        TargetWiring {
            registry: self.registry.clone(),
            stats: self.stats.clone(),
            units: self.units,
            shutdown: self.shutdown.clone(),
            cadence: self.cadence.clone(),
            sampling: self.sampling.clone(),
        }
    }
}

/// The hints derivation and the live page's hub (frames, history), with the task that, after each
/// reading, gathers vitals' own families once, derives the hints from them and hands them to the page.
fn start_live(config: &Config, core: &Core, tasks: &mut Vec<JoinHandle<()>>) -> Arc<LiveHub> {
    let selected_by = match &config.target {
        None => "none selected".to_owned(),
        Some(TargetSpec::Select(Selection::Pid(p))) => format!("--pid {p}"),
        Some(TargetSpec::Select(Selection::PidFile(f))) => format!("--pid-file {}", f.display()),
        Some(TargetSpec::Select(Selection::Process(re))) => format!("--process {re}"),
        Some(TargetSpec::Run { .. }) => "vitals run (child process)".to_owned(),
    };
    let hints = Arc::new(HintSignal::new(HintPolicy {
        min_history_seconds: config.hints_min_history.as_secs_f64(),
        ..HintPolicy::default()
    }));
    core.registry.register(hints.clone());
    let live = Arc::new(LiveHub::new(
        hints.clone(),
        selected_by,
        otlp_sentence(config.otlp_http_addr, config.otlp_grpc_addr),
        core.shutdown.clone(),
    ));
    tracing::debug!(bytes = live.history_bytes(), "live history allocated");
    live.pace(core.cadence.clone());
    tasks.push(core.sampling.spawn(after_each_reading(
        core.registry.clone(),
        hints,
        live.clone(),
        core.sampled.clone(),
        core.shutdown.clone(),
    )));
    live
}

/// After each reading of the main target, at most once a second, until `shutdown`: one gather of vitals'
/// own families, the hints derived from it, then the live page's history point (and frame, when
/// watched). This follows readings rather than a timer of its own: two timers of the same period drift
/// in and out of phase, and a frame would then see two readings' CPU time in one second and none in the
/// next. It runs on the sampling thread, right after the reading that woke it: no other thread wakes.
async fn after_each_reading(
    registry: Registry,
    hints: Arc<HintSignal>,
    live: Arc<LiveHub>,
    sampled: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut last: Option<std::time::Instant> = None;
    let mut gathered = crate::model::Gathered::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sampled.notified() => {}
        }
        // With a shorter --interval a frame spans several readings; the margin absorbs timer jitter.
        if last.is_some_and(|l| l.elapsed() < Duration::from_millis(950)) {
            continue;
        }
        last = Some(std::time::Instant::now());
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // A panic costs this reading's point, not the page's history from now on.
        let followed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            after_reading(&registry, &hints, &live, t, &mut gathered)
        }));
        if followed.is_err() {
            tracing::error!("deriving the hints and the live page from a reading panicked");
        }
    }
}

/// What follows a reading at unix time `t`: one gather of vitals' own families (with nobody watching,
/// only those the hints and the history point read) into the last reading's (`gathered`, reused: a
/// series that comes again is written over, not copied anew), the hints derived from it, the page's
/// history point and, when watched, its frame.
pub fn after_reading(
    registry: &Registry,
    hints: &HintSignal,
    live: &LiveHub,
    t: f64,
    gathered: &mut crate::model::Gathered,
) {
    // The names the hints and the history point read, as a set: asked of each of vitals' hundred
    // families after every reading.
    static NEEDED: std::sync::OnceLock<crate::model::FastSet<&'static str>> =
        std::sync::OnceLock::new();
    let needed = NEEDED.get_or_init(|| {
        [crate::signal::hints::READS, HISTORY_READS]
            .into_iter()
            .flatten()
            .map(|d| d.name)
            .collect()
    });
    let watched = live.watched();
    registry.gather_where_into(gathered, Some(crate::model::Origin::Vitals), |m| {
        watched || needed.contains(m.name)
    });
    hints.observe(t, &gathered.metrics);
    live.tick(&gathered.metrics, t, watched);
}

/// `/`, `/metrics`, `/healthz`, `/readyz` and `/debug/pprof`, reading the registry.
async fn start_http(
    config: &Config,
    core: &Core,
    live: Arc<LiveHub>,
    profiler: Arc<Profiler>,
    continuous: Option<Arc<Continuous>>,
) -> anyhow::Result<JoinHandle<()>> {
    let web = match &config.web_config_file {
        Some(path) => Some(Arc::new(crate::export::http::web_config::WebConfig::load(
            path,
        )?)),
        None => None,
    };
    let listener = bind(config.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let state = HttpState {
        registry: core.registry.clone(),
        status: core.status.clone(),
        live: Some(live),
        web,
        profiler: Some(profiler),
        continuous,
        cadence: Some(core.cadence.clone()),
        sampling: Some(core.sampling.handle()),
    };
    // The listener runs on the sampling thread: a quiet scrape is accepted, read, rendered and answered
    // there in one wake-up, and connections beyond the first few go to the async workers.
    let spill = crate::server::Spill {
        workers: tokio::runtime::Handle::current(),
        local_max: METRICS_LOCAL_CONNECTIONS,
    };
    let listener = listener.into_std()?;
    let shutdown = core.shutdown.clone();
    Ok(core.sampling.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => serve(l, state, shutdown, Some(spill)).await,
            Err(e) => tracing::error!("cannot serve /metrics on the sampling thread: {e}"),
        }
    }))
}

/// Connections of the metrics listener served on the sampling thread at once; further ones go to the
/// async workers. Two: Prometheus keeps its scrape connection open, and an HA pair keeps two, so
/// steady scrapes stay on the sampling thread; a probe that lands there shares it with at most one
/// other connection, and a crowd of clients is spread over the workers.
const METRICS_LOCAL_CONNECTIONS: usize = 2;

/// The stores and derivations the OTLP receiver feeds, registered, with their expiry and N+1 judging
/// running on clocks of their own (a scrape only reads them).
struct OtlpStores {
    red: Arc<RedSignal>,
    app_metrics: Arc<AppMetrics>,
    logs: Arc<LogCounts>,
    /// Database queries: latency per query template and N+1 runs, from the same trace exports.
    db: Arc<DbQueries>,
    /// Runtime metrics for derivation, picked as they arrive, apart from the app metric store.
    runtime_metrics: Arc<RuntimeMetrics>,
    stats: Arc<OtlpStats>,
    /// Told by the receiver after each delivered request: wakes the expiry when nothing was held.
    delivered: Arc<tokio::sync::Notify>,
}

impl OtlpStores {
    fn new(config: &Config, core: &Core) -> Self {
        let overflow = OverflowCounter::default();
        let (limit, ttl) = (config.series_limit, config.series_ttl);
        let red = Arc::new(RedSignal::new(limit, ttl, overflow.clone()));
        let app_metrics = Arc::new(AppMetrics::new(
            AppMetricsConfig {
                series_limit: limit,
                family_limit: FAMILY_LIMIT,
                ttl,
                promote: config.promote_resource_attributes.clone(),
            },
            overflow.clone(),
            // The stores refuse at ingest what the Prometheus exposition could not write apart.
            Arc::new(crate::export::prometheus::naming::PrometheusNames),
        ));
        let logs = Arc::new(LogCounts::new(limit, ttl, overflow.clone()));
        let db = Arc::new(DbQueries {
            store: Arc::new(QuerySignal::new(limit, ttl, overflow.clone())),
            n_plus_one: Arc::new(NPlusOne::new(
                Rule {
                    settle: config.db_trace_settle,
                    ..Rule::default()
                },
                limit,
                ttl,
                overflow.clone(),
            )),
        });
        let stats = Arc::new(OtlpStats::new(move || overflow.get()));
        let registry = &core.registry;
        registry.register(db.store.clone());
        registry.register(db.n_plus_one.clone());
        registry.register(red.clone());
        registry.register(app_metrics.clone());
        registry.register(logs.clone());
        registry.register(stats.clone());
        tokio::spawn(settle_db_every(
            DB_SETTLE_PERIOD,
            db.clone(),
            core.shutdown.clone(),
        ));
        let delivered = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(expire_every(
            expiry_period(ttl),
            red.clone(),
            app_metrics.clone(),
            logs.clone(),
            db.clone(),
            delivered.clone(),
            core.shutdown.clone(),
        ));
        Self {
            red,
            app_metrics,
            logs,
            db,
            runtime_metrics: Arc::new(RuntimeMetrics::new(ttl)),
            stats,
            delivered,
        }
    }
}

/// Forwarding of the app's OTLP data upstream, when configured.
fn start_forwarder(config: &Config, registry: &Registry) -> anyhow::Result<Option<Arc<Forwarder>>> {
    let Some(settings) = &config.forward else {
        return Ok(None);
    };
    let f = Forwarder::start(settings.clone()).map_err(|e| anyhow::anyhow!(e))?;
    registry.register(f.collector());
    Ok(Some(f))
}

/// Push of vitals' own metrics over OTLP, when configured: it reads the same registry as /metrics (the
/// app's own metrics in it are left out by the pusher; they leave through forwarding) and adds its
/// counters.
fn start_pusher(config: &Config, core: &Core) -> anyhow::Result<Option<Arc<Pusher>>> {
    let Some(settings) = &config.push else {
        return Ok(None);
    };
    let p = Pusher::start(
        settings.clone(),
        core.registry.clone(),
        Some(core.cadence.clone()),
    )
    .map_err(anyhow::Error::msg)?;
    core.registry.register(p.collector());
    Ok(Some(p))
}

/// The OTLP receivers' bound addresses (`None`: off).
struct ReceiverAddrs {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

/// The OTLP receiver on gRPC and HTTP, handing each request to forwarding first (a full queue answers
/// the app before anything is derived), then RED, the database queries, the runtime metrics derivation
/// reads, the app metric store and the log counts.
async fn start_receivers(
    config: &Config,
    core: &Core,
    stores: OtlpStores,
    forwarder: Option<Arc<Forwarder>>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<ReceiverAddrs> {
    let mut consumers = Consumers::new().on_delivery(stores.delivered);
    if let Some(f) = forwarder {
        consumers = consumers.onward(f);
    }
    let consumers = consumers
        .traces(stores.red)
        .traces(stores.db)
        .metrics(stores.runtime_metrics)
        .metrics(stores.app_metrics)
        .logs(stores.logs);
    let limits = OtlpLimits::new(
        config.otlp_max_request_bytes,
        config.otlp_max_concurrent_requests,
    );
    let otlp_receiver = Arc::new(Receiver::new(limits, consumers, stores.stats));
    let grpc_listener = match config.otlp_grpc_addr {
        Some(a) => Some(bind_named(a, "--otlp-grpc-addr").await?),
        None => None,
    };
    let http_listener = match config.otlp_http_addr {
        Some(a) => Some(bind_named(a, "--otlp-http-addr").await?),
        None => None,
    };
    let addrs = ReceiverAddrs {
        grpc: grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?,
        http: http_listener.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    let shown = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
    tracing::info!(grpc = %shown(addrs.grpc), http = %shown(addrs.http), "OTLP receiver listening");
    // The receiver speaks OTLP; the shared server accepts its connections within the OTLP limits
    // (and sets TCP_NODELAY: small unary answers must not wait on Nagle plus delayed ACK, 4-5 ms per
    // request otherwise).
    if let Some(l) = grpc_listener {
        let incoming = GuardedListener::new(l, ConnectionLimits::OTLP).into_stream("otlp-grpc");
        tasks.push(tokio::spawn(receiver::grpc::serve(
            incoming,
            otlp_receiver.clone(),
            core.shutdown.clone(),
        )));
    }
    if let Some(l) = http_listener {
        tasks.push(tokio::spawn(crate::server::serve(
            l,
            ConnectionLimits::OTLP,
            None,
            "otlp-http",
            move |req| receiver::http::handle(otlp_receiver.clone(), req),
            core.shutdown.clone(),
            None,
        )));
    }
    Ok(addrs)
}

/// The main target as started: its sampler (none without a selector), the `run` child with whether it
/// runs in a terminal, and whether any selector chose it.
struct MainTarget {
    sampler: Option<JoinHandle<()>>,
    child: Option<(tokio::process::Child, bool)>,
    selected: bool,
}

/// The main target's sampler, with its pauses, memory growth and pools derived from its probes and the
/// app's runtime metrics; in `run` mode the child is started first, told where the receiver is. A child
/// that cannot start gives its exit code as the error.
fn start_main_target(
    config: &Config,
    core: &Core,
    receivers: ReceiverAddrs,
    runtime_metrics: Arc<RuntimeMetrics>,
) -> Result<MainTarget, i32> {
    let mut child = None;
    let selector = match &config.target {
        None => None,
        Some(TargetSpec::Select(s)) => Some(Selector::Given(s.clone())),
        Some(TargetSpec::Run { command, protocol }) => {
            let (c, terminal) = start_child(command, *protocol, &receivers)?;
            let pid = c.id().ok_or_else(|| {
                tracing::error!("child exited before its pid was known");
                1
            })?;
            tracing::info!(pid, command = ?command, terminal, "started child");
            child = Some((c, terminal));
            Some(Selector::Child(pid))
        }
    };
    let derived = Arc::new(TickSignals::new(
        runtime_metrics,
        MemoryGrowth::new(&config.growth_windows, config.leak_threshold),
    ));
    let name = config.target_name.as_deref();
    register_target(&core.registry, name, derived.pause.clone());
    register_target(&core.registry, name, derived.memory.clone());
    register_target(&core.registry, name, derived.pool.clone());
    let selected = selector.is_some();
    if !selected {
        tracing::info!(
            "no target selected: serving OTLP-derived signals and exporter metrics only"
        );
    }
    let parts = SamplerParts {
        target_metrics: core.target_metrics.clone(),
        stats: core.stats.clone(),
        status: core.status.clone(),
        derived,
        units: core.units,
        sampled: core.sampled.clone(),
    };
    let sampler = new_sampler(config, selector, parts);
    Ok(MainTarget {
        sampler: Some(
            core.sampling
                .spawn(sampler.run(core.cadence.join(), core.shutdown.clone())),
        ),
        child,
        selected,
    })
}

/// `vitals run`: starts the child with `OTEL_EXPORTER_OTLP_*` pointing at the receiver for its
/// protocol. A child that cannot start gives its exit code as the error.
fn start_child(
    command: &[String],
    protocol: OtlpProtocol,
    receivers: &ReceiverAddrs,
) -> Result<(tokio::process::Child, bool), i32> {
    let env = match (protocol, receivers.grpc, receivers.http) {
        (OtlpProtocol::Grpc, Some(grpc), _) => run::otlp_env(grpc, grpc, protocol),
        (OtlpProtocol::HttpProtobuf, _, Some(http)) => run::otlp_env(http, http, protocol),
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
    match run::spawn(command, &env, terminal) {
        Ok(c) => Ok((c, terminal)),
        Err(e) => {
            tracing::error!("{e}");
            Err(e.exit_code)
        }
    }
}

/// Stops every task (within a second), then drains forwarding and sends the final push beside it, both
/// within --forward-drain-timeout.
async fn stop(
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    forwarder: Option<Arc<Forwarder>>,
    pusher: Option<Arc<Pusher>>,
) {
    shutdown.cancel();
    let stopped = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(1), stopped)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 1s; exiting anyway");
    }
    // The receivers have stopped taking requests; what they accepted goes upstream within the grace.
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

/// Starts a sampler for each further named target (`--target NAME=SPEC` after the first); with no
/// target named or selected in a pod that shares its process namespace, pod mode's scan instead.
fn start_more_targets(
    config: &Config,
    wiring: &TargetWiring,
    main_selected: bool,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for t in &config.more_targets {
        let selector = Selector::Given(t.selection.clone());
        tracing::info!(target = %t.name, selector = %selector.describe(), "watching a further target");
        tasks.push(start_named_target(config, wiring, &t.name, selector));
    }
    if !main_selected && config.more_targets.is_empty() {
        if let Some(init) = crate::target::pod::sandbox(&config.proc_root) {
            tracing::info!(pid_1 = %init, "no target selected in a pod that shares its process namespace: \
                watching every other container's process tree (name targets with --target to choose)");
            tasks.push(start_pod_targets(config, wiring));
        }
    }
    tasks
}

/// Starts the sampler of a named target that is not the main one: its own target metrics, pauses from hsperfdata,
/// memory growth and pools, every family labelled with its name. The app's OTLP data belongs to the main
/// target, so these derive from their probes alone.
fn start_named_target(
    config: &Config,
    wiring: &TargetWiring,
    name: &str,
    selector: Selector,
) -> JoinHandle<()> {
    let (registry, units) = (&wiring.registry, wiring.units);
    let target_metrics =
        Arc::new(TargetMetrics::new(units).with_info_labels(kubernetes_labels(config)));
    register_target(registry, Some(name), target_metrics.clone());
    // No OTLP consumer feeds this: the app's runtime metrics are the main target's.
    let unfed = Arc::new(RuntimeMetrics::new(config.series_ttl));
    let derived = Arc::new(TickSignals::new(
        unfed,
        MemoryGrowth::new(&config.growth_windows, config.leak_threshold),
    ));
    register_target(registry, Some(name), derived.pause.clone());
    register_target(registry, Some(name), derived.memory.clone());
    register_target(registry, Some(name), derived.pool.clone());
    let parts = SamplerParts {
        target_metrics,
        stats: wiring.stats.clone(),
        status: Arc::new(TargetStatus::default()),
        derived,
        units,
        sampled: Arc::new(tokio::sync::Notify::new()),
    };
    let sampler = new_sampler(config, Some(selector), parts);
    wiring
        .sampling
        .spawn(sampler.run(wiring.cadence.join(), wiring.shutdown.clone()))
}

/// A sampler of the target `selector` chooses (none: no target), reading as the options say.
fn new_sampler(config: &Config, selector: Option<Selector>, parts: SamplerParts) -> Sampler {
    Sampler::new(
        selector,
        CgroupRoots {
            proc_root: config.proc_root.clone(),
            host_root: config.cgroup_root.clone(),
        },
        config.pss.then(PssPolicy::default),
        config.max_tree_processes,
        parts,
    )
}

/// What every further target's sampler is connected to.
#[derive(Clone)]
struct TargetWiring {
    registry: Registry,
    stats: Arc<ExporterStats>,
    units: KernelUnits,
    shutdown: CancellationToken,
    cadence: Arc<Cadence>,
    sampling: Arc<SamplingThread>,
}

/// Zero-configuration pod mode (see [`crate::target::pod`]): scans for the pod's containers every
/// [`WATCH_INTERVAL`] and starts a target for each, named after its program. Runs until shutdown.
fn start_pod_targets(config: &Config, wiring: &TargetWiring) -> JoinHandle<()> {
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
    signals: &mut Signals,
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
            _ = signals.term.recv() => Signal::SIGTERM,
            _ = signals.hup.recv() => Signal::SIGHUP,
            _ = signals.int.recv() => Signal::SIGINT,
            _ = signals.quit.recv() => Signal::SIGQUIT,
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

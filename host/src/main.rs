//! The `legate` binary: Envoy-style command line, config loading, and the process
//! lifecycle (workers, admin, signals, drain).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use legate::{admin, config, server};
use tracing_subscriber::{EnvFilter, Registry, prelude::*, reload};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    Serve,
    Validate,
}

/// Envoy-compatible, WebAssembly-extensible L4/L7 proxy.
#[derive(Parser, Debug)]
#[command(name = "legate", version, about)]
struct Cli {
    /// Path to an Envoy v3 bootstrap config (YAML or JSON).
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<String>,

    /// An inline bootstrap config (YAML or JSON).
    #[arg(long = "config-yaml", value_name = "YAML")]
    config_yaml: Option<String>,

    /// serve: run the proxy; validate: check the config, print OK or every error.
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,

    /// Number of worker threads (default: number of CPU cores).
    #[arg(long)]
    concurrency: Option<usize>,

    /// Log level: trace, debug, info, warning, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,

    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,

    /// Writes the admin address (`ip:port`) to this file once it is bound, as
    /// Envoy's flag of the same name; useful with `port_value: 0`.
    #[arg(long = "admin-address-path", value_name = "FILE")]
    admin_address_path: Option<String>,

    /// Accepted for Envoy command-line compatibility; Legate has no hot restart.
    #[arg(long = "disable-hot-restart", hide = true)]
    disable_hot_restart: bool,

    /// Node id (`node.id`), as Envoy's --service-node.
    #[arg(long = "service-node")]
    service_node: Option<String>,

    /// Seeds the generator behind random decisions (fault percentages), so that
    /// a run repeats them; worker `i` uses `seed + i`. Legate's own flag.
    #[arg(long = "random-seed", value_name = "N")]
    random_seed: Option<u64>,

    /// Node cluster (`node.cluster`), as Envoy's --service-cluster.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,

    /// Keeps the machine code of compiled Wasm filters in DIR (made if
    /// missing; writable by this user only) and reuses it on later starts and
    /// reloads instead of compiling again. Legate's own flag.
    #[arg(long = "wasm-cache-dir", value_name = "DIR")]
    wasm_cache_dir: Option<std::path::PathBuf>,
}

/// Envoy's level names to tracing's.
fn tracing_level(level: &str) -> Result<&'static str, String> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        other => {
            return Err(format!(
                "error: invalid log level \"{other}\" (expected trace, debug, info, warning, error, critical or off)"
            ));
        }
    })
}

fn load(cli: &Cli) -> Result<config::Bootstrap, String> {
    let result = match (&cli.config_path, &cli.config_yaml) {
        (Some(p), None) => config::load_file(p),
        (None, Some(y)) => config::load_str(y, "--config-yaml"),
        (Some(_), Some(_)) => {
            return Err("error: give either --config-path or --config-yaml, not both".into());
        }
        (None, None) => {
            return Err("error: no config given; use -c FILE or --config-yaml YAML".into());
        }
    };
    result.map_err(|e| e.to_string())
}

fn apply_node_flags(cli: &Cli, b: &mut config::Bootstrap) {
    if let Some(n) = &cli.service_node {
        b.node.id = n.clone();
    }
    if let Some(c) = &cli.service_cluster {
        b.node.cluster = c.clone();
    }
}

/// The watched files (the config and the `.wasm` files it loads) as the poll
/// last saw them. Their metadata is read every second; their contents only
/// when it changed, or while a file is fresh: metadata misses a same-size edit
/// made within one filesystem clock tick. So a large filter is not read and
/// hashed while idle, and a file touched but not changed does not reload.
struct Watched {
    meta: Vec<Option<FileMeta>>,
    contents: Option<u64>,
}

/// How long after its last change a file's contents are compared on every poll.
const FRESH: Duration = Duration::from_secs(3);

/// Size, modification and change times, inode.
type FileMeta = (u64, i64, i64, i64, i64, u64);

impl Watched {
    fn now(cli: &Cli, shared: &server::Shared) -> Watched {
        Watched {
            meta: file_meta(cli, shared),
            contents: config_stamp(cli, shared),
        }
    }

    /// Whether the files changed since the last look.
    fn changed(&mut self, cli: &Cli, shared: &server::Shared) -> bool {
        let meta = file_meta(cli, shared);
        if meta == self.meta && !fresh(&meta) {
            return false;
        }
        self.meta = meta;
        let contents = config_stamp(cli, shared);
        if contents == self.contents {
            return false;
        }
        self.contents = contents;
        true
    }
}

fn file_meta(cli: &Cli, shared: &server::Shared) -> Vec<Option<FileMeta>> {
    use std::os::unix::fs::MetadataExt;
    let config = cli.config_path.iter().map(std::path::PathBuf::from);
    config
        .chain(shared.config().bootstrap.wasm_files())
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.ino(),
            ))
        })
        .collect()
}

/// Whether a file was modified within the last [`FRESH`].
fn fresh(meta: &[Option<FileMeta>]) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    meta.iter()
        .flatten()
        .any(|m| now - m.1 <= FRESH.as_secs() as i64)
}

/// A hash of the config file's contents and of the `.wasm` files the config in
/// force loads.
fn config_stamp(cli: &Cli, shared: &server::Shared) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(cli.config_path.as_ref()?).ok()?.hash(&mut h);
    for f in shared.config().bootstrap.wasm_files() {
        std::fs::read(&f).ok().hash(&mut h);
    }
    Some(h.finish())
}

/// Reloads. `seen` holds the files as read before, so a change made while the
/// reload runs is caught by the next poll; only when the new config loads other
/// `.wasm` files is it taken again, for those.
async fn reload_watched(cli: &Cli, shared: &server::Shared, seen: &mut Watched) {
    let files = shared.config().bootstrap.wasm_files();
    reload(cli, shared).await;
    if shared.config().bootstrap.wasm_files() != files {
        *seen = Watched::now(cli, shared);
    }
}

/// Loads and validates the config again. A bad config is logged and the current
/// one stays in force; a good one is put in force for new connections.
async fn reload(cli: &Cli, shared: &server::Shared) {
    let s = legate::stats::store();
    let mut b = match load(cli) {
        Ok(b) => b,
        Err(e) => {
            s.counter("server.config_reload_failed").inc();
            for line in e.lines() {
                tracing::error!("config reload refused: {line}");
            }
            return;
        }
    };
    apply_node_flags(cli, &mut b);
    // The admin listener is bound once; moving it needs a restart.
    let admin = |b: &config::Bootstrap| b.admin.as_ref().map(|a| a.address);
    if admin(&b) != admin(&shared.config().bootstrap) {
        s.counter("server.config_reload_failed").inc();
        tracing::error!(
            "config reload refused: admin.address changed; the admin listener moves only on restart"
        );
        return;
    }
    match shared.prepare(b) {
        Ok(next) => {
            next.clusters.clone().resolve_strict_dns().await;
            let v = shared.install(next);
            s.counter("server.config_reload").inc();
            tracing::info!("config version {v} in force");
        }
        Err(e) => {
            s.counter("server.config_reload_failed").inc();
            tracing::error!("config reload refused: {e}");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match tracing_level(&cli.log_level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new(level));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();

    if let Some(dir) = &cli.wasm_cache_dir
        && let Err(e) = legate::wasm::cache::set_dir(dir)
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let mut bootstrap = match load(&cli) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if cli.mode == Mode::Validate {
        // Plugins get their configuration now, as they would on start.
        if let Err(e) = legate::wasm::check_all(&bootstrap) {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
        println!("OK");
        return ExitCode::SUCCESS;
    }
    apply_node_flags(&cli, &mut bootstrap);
    let concurrency = cli
        .concurrency
        .filter(|c| *c > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let current_level = Arc::new(std::sync::Mutex::new(level.to_string()));
    rt.block_on(async move {
        let admin_addr = bootstrap.admin.as_ref().map(|a| a.address);
        let shared = match server::Shared::build(bootstrap, concurrency) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        shared.config().clusters.clone().resolve_strict_dns().await;
        if let Some(addr) = admin_addr {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: admin: cannot bind {addr}: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Some(p) = &cli.admin_address_path {
                let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = std::fs::write(p, bound) {
                    eprintln!("error: cannot write admin address to {p}: {e}");
                    return ExitCode::from(1);
                }
            }
            let lvl = current_level.clone();
            let lvl2 = current_level.clone();
            let control = Arc::new(admin::Control {
                shared: shared.clone(),
                set_log_level: Box::new(move |l| {
                    let t = tracing_level(l)?;
                    handle
                        .reload(EnvFilter::new(t))
                        .map_err(|e| e.to_string())?;
                    *lvl.lock().unwrap_or_else(|e| e.into_inner()) = t.to_string();
                    tracing::info!("log level set to {t}");
                    Ok(())
                }),
                log_level: Box::new(move || lvl2.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                command_line: serde_json::json!({
                    "concurrency": concurrency,
                    "drain_time": format!("{}s", cli.drain_time_s),
                    "log_level": cli.log_level,
                    "config_path": cli.config_path.clone().unwrap_or_default(),
                }),
            });
            tracing::info!("admin address: {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
            tokio::spawn(admin::serve(listener, control));
        }
        let workers = match server::start_workers(&shared, cli.random_seed) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: cannot start workers: {e}");
                return ExitCode::from(1);
            }
        };
        for l in &shared.config().listeners {
            tracing::info!(listener = %l.name, "listening on {}", l.local_addr());
        }
        tracing::info!("legate started with {concurrency} worker(s)");

        let mut drain = shared.drain.subscribe();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        // The config file is polled for changes; SIGHUP reloads at once.
        let mut seen = Watched::now(&cli, &shared);
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {
                    tracing::info!("SIGTERM: draining");
                    break;
                }
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); break; }
                _ = drain.wait_for(|d| *d) => { tracing::info!("admin quit: draining"); break; }
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {
                    tracing::info!("SIGHUP: reloading the config");
                    seen = Watched::now(&cli, &shared);
                    reload_watched(&cli, &shared, &mut seen).await;
                }
                _ = poll.tick() => {
                    if seen.changed(&cli, &shared) {
                        tracing::info!("config or Wasm file changed: reloading");
                        reload_watched(&cli, &shared, &mut seen).await;
                    }
                }
            }
        }
        shared.start_drain();
        // Workers exit once their connections are done; the drain time bounds it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.drain_time_s);
        while !workers.iter().all(|w| w.is_finished()) {
            if tokio::time::Instant::now() >= deadline {
                tracing::info!("drain time elapsed with connections open; exiting");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("exiting");
        ExitCode::SUCCESS
    })
}

//! The `weft` command: parses flags and the config file, then starts one
//! role (`collector`, `indexer`, `query`) or all three (`standalone`).

mod app;
mod bench;
mod config;
mod import;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Logs and metrics of ML training jobs on Kubernetes: tail, index, search, alert"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collector, indexer and query in one process on local directories.
    Standalone {
        /// Root of the kubelet pod log tree [default: /var/log/pods]
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Data directory [default: ./weft-data]
        #[arg(long)]
        data: Option<PathBuf>,
        /// HTTP address for every API [default: 127.0.0.1:3100]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Config file (YAML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node name put on records [default: NODE_NAME, then the hostname]
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// OTLP/HTTP receiver address ("" turns it off) [default: 127.0.0.1:4318]
        #[arg(long)]
        otlp_listen: Option<String>,
        /// Load samples from a Prometheus text exposition with timestamps
        /// (e.g. examples/gpu-metrics.prom); once per data directory.
        #[arg(long = "import", value_name = "FILE")]
        import: Vec<PathBuf>,
    },
    /// Node agent: tails pod logs and ships them to an indexer.
    Collector {
        /// Root of the kubelet pod log tree [default: /var/log/pods]
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Checkpoints and spool [default: ./weft-state]
        #[arg(long)]
        state: Option<PathBuf>,
        /// Indexer base URL [default: http://127.0.0.1:3100]
        #[arg(long)]
        indexer: Option<String>,
        /// HTTP address for /metrics, /healthz and /readyz [default: none]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Config file (YAML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node name put on records [default: NODE_NAME, then the hostname]
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// OTLP/HTTP receiver address ("" turns it off) [default: 127.0.0.1:4318]
        #[arg(long)]
        otlp_listen: Option<String>,
    },
    /// Write path: ingest endpoints, WAL, splits.
    Indexer {
        /// Data directory [default: ./weft-data]
        #[arg(long)]
        data: Option<PathBuf>,
        /// HTTP address [default: 127.0.0.1:3100]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Delete splits older than this [default: 7d]
        #[arg(long)]
        retention: Option<String>,
        /// Config file (YAML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Dry run: reads a log file through the collector's parsing and metric
    /// extraction and prints one JSON object per record.
    Inspect {
        /// Force the file format instead of detecting it.
        #[arg(long, value_enum)]
        format: Option<InspectFormat>,
        /// Config file (YAML) whose collector.extract_rules apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The log file.
        file: PathBuf,
    },
    /// Runs PromQL test files (Prometheus' promqltest format) against
    /// weft's engine; prints each failing case and `N passed, M failed, K skipped`.
    PromqlTest {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Measures the collector's and the indexer's work on one thread each
    /// over a log tree (used by benches/run; prints JSON).
    #[command(hide = true)]
    BenchPipeline {
        /// A kubelet pod log tree.
        logs: PathBuf,
        /// An empty data directory for the indexer.
        data: PathBuf,
    },
    /// Reads every GPU once through NVML, as the collector does, and prints
    /// the counters in the Prometheus text format with dcgm-exporter's names;
    /// fails with the reason where no NVIDIA driver is found.
    Gpu {
        /// Then waits this long for NVML Xid events and prints each (e.g. 10s).
        #[arg(long, value_name = "DURATION")]
        xid_wait: Option<String>,
        /// The `Hostname` label [default: NODE_NAME, then the hostname]
        #[arg(long)]
        node: Option<String>,
    },
    /// Rule files: check them (`weft rules check FILE...`).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Config files: check them (`weft config check FILE...`).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Read path: search, Loki and Prometheus APIs.
    Query {
        /// Data directory [default: ./weft-data]
        #[arg(long)]
        data: Option<PathBuf>,
        /// HTTP address [default: 127.0.0.1:3100]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Config file (YAML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validates rule files (Prometheus format, LogQL groups allowed) and
    /// points at the line of any error; `builtin` checks weft's own pack.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parses config files as every role would (unknown fields, bad
    /// durations and types are errors with their line) and prints each
    /// verdict.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn config_check(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut bad = 0;
    for file in files {
        match config::WeftConfig::load(file) {
            Ok(_) => println!("SUCCESS {}", file.display()),
            Err(e) => {
                println!("FAILED {e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} config files are invalid", files.len());
    }
    Ok(())
}

/// `weft gpu`: one NVML read printed as an exposition on stdout; the
/// driver line, and Xid events when asked to wait for them, on stderr.
fn gpu(xid_wait: Option<&str>, node: Option<String>) -> anyhow::Result<()> {
    use weft_collector::sources::gpu;
    let wait = xid_wait
        .map(|text| weft_model::time::parse_duration(text).map_err(|e| anyhow::anyhow!("--xid-wait: {e}")))
        .transpose()?
        .map(|nanos| std::time::Duration::from_nanos(nanos as u64));
    let node = weft_collector::config::node_name(node.as_deref());
    let (driver, text) = gpu::read_exposition(&node).map_err(anyhow::Error::msg)?;
    eprintln!("NVML: {driver}");
    print!("{text}");
    let Some(wait) = wait else { return Ok(()) };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (events, received) = std::sync::mpsc::sync_channel(64);
    let watch = gpu::nvml::watch_xid(stop.clone(), events).map_err(anyhow::Error::msg)?;
    eprintln!(
        "waiting {} for Xid events",
        weft_model::time::format_duration(wait.as_nanos() as i64)
    );
    let deadline = std::time::Instant::now() + wait;
    let mut seen = 0;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match received.recv_timeout(left) {
            Ok(gpu::nvml::XidEvent { gpu, uuid, xid }) => {
                seen += 1;
                eprintln!("Xid {xid} on GPU {gpu} ({uuid}): {}", gpu::nvml::xid_meaning(xid));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            // The watch thread ended early: NVML refused it (its reason is logged above).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = watch.join();
                anyhow::bail!("the Xid watch stopped after {seen} events (see the log line above)");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = watch.join();
    eprintln!("{seen} Xid events");
    Ok(())
}

fn rules_check(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut bad = 0;
    for file in files {
        let (text, name) = if file.as_os_str() == "builtin" {
            (weft_query::rules::BUILTIN_RULES.to_string(), "builtin".to_string())
        } else {
            match std::fs::read_to_string(file) {
                Ok(text) => (text, file.display().to_string()),
                Err(e) => {
                    println!("FAILED {}: {e}", file.display());
                    bad += 1;
                    continue;
                }
            }
        };
        match weft_query::rules::file::parse_rule_file(&text, &name, std::time::Duration::from_secs(30)) {
            Ok(groups) => {
                let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!("SUCCESS {name}: {} groups, {rules} rules", groups.len());
            }
            Err(e) => {
                println!("FAILED {e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} rule files have errors", files.len());
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InspectFormat {
    Cri,
    Docker,
    Plain,
}

fn inspect(file: &std::path::Path, format: Option<InspectFormat>, config: Option<&PathBuf>) -> anyhow::Result<()> {
    use weft_collector::sources::pod_logs::tailer::ForcedFormat;
    let cfg = load(config)?;
    let processing = cfg.collector.record_processing()?;
    let format = format.map(|f| match f {
        InspectFormat::Cri => ForcedFormat::Cri,
        InspectFormat::Docker => ForcedFormat::Docker,
        InspectFormat::Plain => ForcedFormat::Plain,
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = weft_collector::inspect::inspect(file, format, &processing, &mut out)
        .map(|_| ())
        .and_then(|_| {
            std::io::Write::flush(&mut out).map_err(|source| weft_collector::CollectorError::Io {
                path: "stdout".into(),
                source,
            })
        });
    match written {
        // The reader went away (`| head`): not an error.
        Err(weft_collector::CollectorError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<config::WeftConfig> {
    match path {
        Some(path) => config::WeftConfig::load(path),
        None => Ok(config::WeftConfig::default()),
    }
}

/// glibc's allocator gives each thread its own arena and keeps freed
/// memory until the top of the heap has 128 KiB+ free (growing that
/// threshold with the largest blocks freed): a pipeline that builds and
/// drops megabyte batches on several threads then holds several times
/// what it uses. Two arenas, a fixed 128 KiB trim threshold and a 1 MiB
/// mmap threshold halved the collector's and the indexer's resident memory
/// under a steady feed at the same throughput (`benches/run`,
/// BENCHMARKS.md). `MALLOC_ARENA_MAX`, `MALLOC_TRIM_THRESHOLD_` and
/// `MALLOC_MMAP_THRESHOLD_` in the environment still win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets allocator parameters; no other thread
        // exists yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024) };
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // Setting the trim threshold freezes the mmap threshold at 128 KiB:
        // every Arrow buffer or tantivy arena above it would be a fresh
        // mmap, page-faulted in and unmapped again (a quarter slower).
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn promql_test(files: &[PathBuf]) -> anyhow::Result<()> {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for file in files {
        let report = weft_query::promql::testfile::run_file(file)?;
        for failure in &report.failed {
            println!("FAIL {failure}");
        }
        for skip in &report.skipped {
            println!("SKIP {skip}");
        }
        passed += report.passed;
        failed += report.failed.len();
        skipped += report.skipped.len();
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        anyhow::bail!("{failed} PromQL test cases failed");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::PromqlTest { files } = &cli.command {
        return promql_test(files);
    }
    if let Command::BenchPipeline { logs, data } = &cli.command {
        app::init_logging(Some("warn"), false);
        return bench::run(logs, data);
    }
    if let Command::Inspect { format, config, file } = &cli.command {
        return inspect(file, *format, config.as_ref());
    }
    if let Command::Rules {
        command: RulesCommand::Check { files },
    } = &cli.command
    {
        return rules_check(files);
    }
    if let Command::Gpu { xid_wait, node } = &cli.command {
        app::init_logging(Some("info"), false);
        return gpu(xid_wait.as_deref(), node.clone());
    }
    if let Command::Config {
        command: ConfigCommand::Check { files },
    } = &cli.command
    {
        return config_check(files);
    }
    let (role, mut cfg) = match &cli.command {
        Command::Standalone { config, .. } => (app::Role::Standalone, load(config.as_ref())?),
        Command::Collector { config, .. } => (app::Role::Collector, load(config.as_ref())?),
        Command::Indexer { config, .. } => (app::Role::Indexer, load(config.as_ref())?),
        Command::Query { config, .. } => (app::Role::Query, load(config.as_ref())?),
        Command::PromqlTest { .. }
        | Command::Inspect { .. }
        | Command::Rules { .. }
        | Command::Config { .. }
        | Command::Gpu { .. }
        | Command::BenchPipeline { .. } => {
            unreachable!("handled above")
        }
    };
    let mut imports = Vec::new();
    match cli.command {
        Command::Standalone {
            logs,
            data,
            listen,
            node,
            otlp_listen,
            import,
            ..
        } => {
            imports = import;
            if let Some(otlp) = otlp_listen {
                cfg.collector.otlp_listen = otlp;
            }
            if let Some(logs) = logs {
                cfg.collector.logs = logs;
            }
            cfg.data = data.or(cfg.data);
            cfg.listen = listen.or(cfg.listen);
            cfg.collector.node = node.or(cfg.collector.node);
        }
        Command::Collector {
            logs,
            state,
            indexer,
            node,
            otlp_listen,
            listen,
            ..
        } => {
            cfg.listen = listen.or(cfg.listen);
            if let Some(otlp) = otlp_listen {
                cfg.collector.otlp_listen = otlp;
            }
            if let Some(logs) = logs {
                cfg.collector.logs = logs;
            }
            if let Some(state) = state {
                cfg.collector.state = state;
            }
            if let Some(indexer) = indexer {
                cfg.collector.indexer = indexer;
            }
            cfg.collector.node = node.or(cfg.collector.node);
        }
        Command::Indexer {
            data, listen, retention, ..
        } => {
            cfg.data = data.or(cfg.data);
            cfg.listen = listen.or(cfg.listen);
            if let Some(retention) = retention {
                let nanos = weft_model::time::parse_duration(&retention).map_err(|e| anyhow::anyhow!("--retention: {e}"))?;
                cfg.indexer.retention = std::time::Duration::from_nanos(nanos as u64);
            }
        }
        Command::Query { data, listen, .. } => {
            cfg.data = data.or(cfg.data);
            cfg.listen = listen.or(cfg.listen);
        }
        Command::PromqlTest { .. }
        | Command::Inspect { .. }
        | Command::Rules { .. }
        | Command::Config { .. }
        | Command::Gpu { .. }
        | Command::BenchPipeline { .. } => {
            unreachable!("handled above")
        }
    }
    app::init_logging(cfg.log_level.as_deref(), cfg.log_format == config::LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft")
        .build()?;
    runtime.block_on(app::run(role, cfg, imports))
}

//! The `transcast` binary: parses the command line, sets up logging and GStreamer, hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use transcast::config::{self, Config, EncodeArgs, LogFormat, ServeArgs};

#[derive(Parser)]
#[command(
    name = "transcast",
    version,
    about = "Live media transcoding proxy: push any container over HTTP, watch live WebM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at startup: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the daemon (defaults: 127.0.0.1:8080, embedded pipeline templates).
    Serve(ServeArgs),
    /// Check a config file as `serve --config FILE` reads it (keys, values, templates), without starting the
    /// daemon: exits 0 and says so when it is good, 1 with every problem's key and line when not.
    CheckConfig {
        /// The TOML file (see transcast.example.toml).
        file: PathBuf,
    },
    /// One source's pipeline in a process of its own (`--source-isolation on`): spawned by the daemon, which
    /// speaks to it over stdin and stdout.
    #[command(hide = true)]
    Worker {
        /// The stream it feeds (for `ps` and the log).
        #[arg(long)]
        stream: String,
    },
    /// Print the gst-launch-1.0 line equivalent to the pipeline a push of FILE gets (and optionally run it).
    Pipeline {
        /// The input file.
        #[arg(long)]
        input: PathBuf,
        /// Where the line writes its WebM output.
        #[arg(long, default_value = "out.webm")]
        output: PathBuf,
        /// Run the line in-process instead of only printing it.
        #[arg(long)]
        run: bool,
        /// Directory of pipeline templates that override the embedded ones.
        #[arg(long)]
        pipelines: Option<PathBuf>,
        #[command(flatten)]
        encode: EncodeArgs,
    },
}

/// glibc malloc settings for the daemon: few arenas (GStreamer's streaming threads would each grow one and
/// keep it), and large blocks mapped and returned instead of kept in the heap. Measured with
/// `transcast-bench --soak` (README, Reliability): with glibc's defaults RSS climbed about 14 MiB a round and kept
/// climbing; with these it levels off within two rounds.
const MALLOC_TUNABLES: &str =
    "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536";

/// `serve` runs with [`MALLOC_TUNABLES`]: glibc reads them only at process start, so the first time the process
/// replaces itself with the same command and them set. An operator's own `GLIBC_TUNABLES`, or
/// `TRANSCAST_MALLOC=default`, is left alone.
fn with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some()
        || std::env::var("TRANSCAST_MALLOC").is_ok_and(|v| v == "default")
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    eprintln!("transcast: running with glibc's malloc defaults ({err})");
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        with_malloc_tunables();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let (config, loaded) = match args.config.clone() {
                // What follows `serve`: flags override the file.
                Some(path) => {
                    let argv: Vec<_> = std::env::args_os().skip(2).collect();
                    let (config, loaded) =
                        config::file::load(&path, &argv).map_err(anyhow::Error::msg)?;
                    (config, Some(loaded))
                }
                None => (Config::from_args(args).map_err(anyhow::Error::msg)?, None),
            };
            init_logging(config.log_format);
            gstreamer::init().context("initialising GStreamer")?;
            serve(config, loaded)
        }
        Command::Worker { .. } => {
            // Before anything starts a thread: the worker locks down its only one.
            transcast::source::worker::worker_main().map_err(anyhow::Error::msg)
        }
        Command::CheckConfig { file } => {
            init_logging(LogFormat::Text);
            gstreamer::init().context("initialising GStreamer")?;
            let (config, loaded) = config::file::load(&file, &[]).map_err(anyhow::Error::msg)?;
            let streams = config.streams.len();
            transcast::state::Current::build(config).map_err(|e| {
                anyhow::Error::msg(loaded.locate(format!("pipeline templates: {e}")))
            })?;
            println!(
                "{}: ok ({} keys, {streams} declared streams, sha256 {})",
                file.display(),
                loaded.keys,
                loaded.sha256
            );
            Ok(())
        }
        Command::Pipeline {
            input,
            output,
            run,
            pipelines,
            encode,
        } => {
            init_logging(LogFormat::Text);
            gstreamer::init().context("initialising GStreamer")?;
            let settings = encode.settings().map_err(anyhow::Error::msg)?;
            let templates = transcast::templates::Templates::load(pipelines.as_deref(), &settings)?;
            let line = transcast::launchline::describe(&input, &output, &templates)?;
            println!("{}", line.shell());
            if run {
                line.run()?;
                eprintln!("wrote {}", output.display());
            }
            Ok(())
        }
    }
}

/// The log goes to stdout: colour codes only when that is a terminal and `NO_COLOR` is not set (a file or
/// journald gets plain lines), or JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("TRANSCAST_LOG")
        // srt-tokio logs each connection's handshake and close at info: the SRT source's own lines say it.
        .unwrap_or_else(|_| EnvFilter::new("info,srt_protocol=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

fn serve(config: Config, loaded: Option<config::file::Loaded>) -> anyhow::Result<()> {
    if let Some(l) = &loaded {
        tracing::info!(file = %l.file, keys = l.keys, streams = config.streams.len(), sha256 = %l.sha256, "configuration file loaded");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down");
            on_signal.cancel();
        });
        transcast::control::app::run(config, shutdown).await.context("transcast serve")
    })
}

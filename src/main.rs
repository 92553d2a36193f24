//! The `transcast` binary: parses the command line, sets up logging and GStreamer, hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use transcast::config::{Config, EncodeArgs, ServeArgs};

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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TRANSCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    gstreamer::init().context("initialising GStreamer")?;
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Pipeline {
            input,
            output,
            run,
            pipelines,
            encode,
        } => {
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args).map_err(anyhow::Error::msg)?;
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

//! The `shoal` binary: `shoal up` runs a node; the other commands are its client.

use anyhow::Context as _;
use clap::Parser as _;
use shoal::commands::{Cli, Command};

// Requests allocate and free many small objects across threads: mimalloc does that with
// less contention and fewer page faults than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Up(ref args) => up(args, cli.token.clone()).await,
                    _ => shoal::commands::run_client(cli).await,
                }
            })
        });
    if let Err(error) = result {
        eprintln!("shoal: {error:#}");
        std::process::exit(1);
    }
}

async fn up(args: &shoal::commands::UpArgs, token: Option<String>) -> anyhow::Result<()> {
    // Check every flag before binding or opening anything.
    shoal::check_exposure(args.api_listen, token.is_some())?;
    // An address a cluster's peers could not reach is refused before anything listens on it.
    args.cluster(args.api_listen, args.gateway_listen)?;
    let api = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the management API to {}", args.api_listen))?;
    let gateway = tokio::net::TcpListener::bind(args.gateway_listen)
        .await
        .with_context(|| format!("binding the gateway to {}", args.gateway_listen))?;
    let tls = args.tls(api.local_addr()?)?;
    // A node joining a cluster advertises the ports it got (port 0 picks one).
    let config = args.node_config(token);
    let cluster = args.cluster(api.local_addr()?, gateway.local_addr()?)?;
    let (node, read_only) = match &cluster {
        Some(cluster) => {
            let opened = shoal::open_cluster_node(config, cluster.clone()).await?;
            (opened.node, opened.read_only)
        }
        None => (shoal::open_node(config).await?, false),
    };
    // Listening for signals before the line that says the node is up: a supervisor may stop
    // it the moment it reads that line.
    let shutdown = shutdown_signal()?;
    // One line on stdout for people and scripts: where to find this node. Written so that a
    // reader gone away is no reason to fail.
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "shoal is up: api {}://{} gateway http://{}{}",
            if tls.is_some() { "https" } else { "http" },
            api.local_addr()?,
            gateway.local_addr()?,
            if read_only {
                " (read-only: etcd cannot be reached)"
            } else {
                ""
            }
        );
        let _ = stdout.flush();
    }
    let Some(cluster) = cluster.filter(|_| read_only) else {
        return shoal::serve_with_tls(node, api, gateway, tls, shutdown).await;
    };
    // Serving what it last knew: once etcd answers, the node stops and starts again, the
    // same command, to join.
    let rejoin = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let rejoin = rejoin.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = shoal::etcd_reachable(&cluster) => {
                    tracing::info!("etcd answers again: starting again to join the cluster");
                    rejoin.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    };
    shoal::serve_with_tls(node, api, gateway, tls, stop).await?;
    if !rejoin.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt as _;
    let program = std::env::current_exe().context("finding this program")?;
    let error = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(error).context("starting again to join the cluster")
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM after it is called: both are listened for
/// from the call on, not from the first poll.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "shoal=info,shoal_api=info,shoal_node=info,shoal_gateway=info,shoal_runtime=info,\
         shoal_registry=info,shoal_registry_redb=info,shoal_registry_etcd=info,tower_http=warn"
            .into()
    });
    // Colour codes only for a person watching: a log file or a journal keeps plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

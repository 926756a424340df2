//! The `spanlake` binary: parses the command line and runs the chosen command.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser as _;
use spanlake::app::{Listeners, Server};
use spanlake::config::{Cli, Command};
use tokio::net::TcpListener;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("spanlake: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    // The Delta kernel logs every snapshot it builds at INFO (and a missing table, which
    // spanlake then creates, as an ERROR); its failures reach spanlake as errors, which
    // spanlake logs. Name `buoyant_kernel` in RUST_LOG to see its own lines.
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = tracing_subscriber::EnvFilter::new(&wanted);
    if !wanted.contains("buoyant_kernel") {
        filter = filter.add_directive("buoyant_kernel=off".parse().expect("a directive"));
    }
    if !wanted.contains("deltalake_core") {
        // Its commit loop logs a conflict as an ERROR even when spanlake then handles it
        // (and logs what it did); spanlake reports every commit failure itself.
        for directive in [
            "deltalake_core=warn",
            "deltalake_core::kernel::transaction=off",
        ] {
            filter = filter.add_directive(directive.parse().expect("a directive"));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(config) => serve(*config).await,
        Command::Sql(args) => sql(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Loadgen(args) if args.decode_only => {
            let cost = spanlake::loadgen::decode_cost(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&cost)?);
            } else {
                println!(
                    "decoded {} requests ({} spans, {} bytes) in {:.3} s: {:.0} spans/s",
                    cost.requests,
                    cost.spans,
                    cost.bytes,
                    cost.seconds,
                    cost.spans as f64 / cost.seconds.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Loadgen(args) => {
            let json = args.json;
            let summary = spanlake::loadgen::run(args).await?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.text());
            }
            Ok(())
        }
    }
}

async fn sql(args: spanlake::config::SqlArgs) -> anyhow::Result<()> {
    use spanlake::config::OutputFormat;
    let workspace = spanlake::Workspace::new(&args.workspace)?;
    let location = spanlake::config::storage_location(&args.data_dir, args.storage.as_deref());
    let url = spanlake::storage::parse_location(&location)?;
    let storage = spanlake::storage::Storage::open(url, "reader".into(), false)
        .await
        .with_context(|| format!("opening the table of spans at {location}"))?;
    let catalog = std::sync::Arc::new(spanlake::catalog::Catalog::open(&storage, false).await);
    let engine = spanlake::query::QueryEngine::new(
        std::sync::Arc::new(storage),
        catalog,
        None,
        args.query.limits(),
    )?;
    let result = engine.sql(&workspace, &args.sql).await?;
    match args.format {
        OutputFormat::Table => {
            println!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&result.batches)?
            );
        }
        OutputFormat::Json => {
            let rows = spanlake::api::json::rows(&result.batches);
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Csv => {
            let csv = spanlake::api::render::to_csv(&result.batches)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{}", String::from_utf8_lossy(&csv));
        }
    }
    Ok(())
}

async fn migrate(args: spanlake::config::MigrateArgs) -> anyhow::Result<()> {
    let location = spanlake::config::storage_location(&args.data_dir, args.storage.as_deref());
    let url = spanlake::storage::parse_location(&location)?;
    let _lock = spanlake::storage::lock_data_dir(&args.data_dir)?;
    let node = spanlake::storage::node_id(&args.data_dir, args.node_id.as_deref())?;
    let storage = spanlake::storage::Storage::open(url, node, true)
        .await
        .with_context(|| format!("opening the table of spans at {location}"))?;
    let adopted = spanlake::migrate::adopt(&args.data_dir, &storage).await?;
    println!("spanlake: adopted {adopted} Parquet files of an earlier version into {location}");
    Ok(())
}

/// A listener on `addr`, for `what` (named in the error).
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// [`bind`], or no listener when `addr` is `off`.
async fn bind_unless_off(
    addr: Option<SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => Ok(Some(bind(addr, what).await?)),
        None => Ok(None),
    }
}

async fn serve(config: spanlake::config::ServeConfig) -> anyhow::Result<()> {
    let grpc = bind(config.grpc_addr, "gRPC").await?;
    let http = bind(config.http_addr, "HTTP").await?;
    let flight = bind_unless_off(config.flight_addr, "Flight SQL").await?;
    let pg = bind_unless_off(config.pg_addr, "PostgreSQL").await?;
    let location = spanlake::config::storage_location(&config.data_dir, config.storage.as_deref());
    let listeners = Listeners {
        grpc,
        http,
        flight,
        pg,
    };
    let server = Server::start_on(config, listeners).await?;
    println!("spanlake: OTLP/gRPC listening on {}", server.grpc_addr());
    println!(
        "spanlake: HTTP listening on {} (OTLP/HTTP at /v1/traces)",
        server.http_addr()
    );
    if let Some(addr) = server.flight_addr() {
        println!("spanlake: Arrow Flight SQL listening on {addr}");
    }
    if let Some(addr) = server.pg_addr() {
        println!("spanlake: PostgreSQL wire protocol listening on {addr}");
    }
    println!("spanlake: storing spans in the Delta table at {location}");
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    server.wait().await?;
    println!("spanlake: stopped; every buffer is flushed to the table");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

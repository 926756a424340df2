//! Wiring: listeners → receivers → ingest → WAL → buffer → flusher → the Delta table, and
//! a graceful stop.
//!
//! Start order: the table is opened (created if missing) and a data dir of the previous
//! layout adopted into it; listeners serve at once (ingest and queries answer 503 until
//! ready); the WAL is replayed into the buffer from where the table says this node's
//! flushed records end (flushing when it passes a threshold, so memory stays bounded),
//! then the WAL writer opens a new segment and ingestion opens. Stop order: stop accepting
//! and finish in-flight requests, flush every buffer to the table, stop the WAL writer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::ApiState;
use crate::api::flight::FlightSql;
use crate::api::grpc::QueryGrpc;
use crate::api::pg::PgWire;
use crate::auth::Auth;
use crate::buffer::{Buffer, FlushThresholds};
use crate::catalog::Catalog;
use crate::config::ServeConfig;
use crate::flush::{Flusher, Staging, flush_replayed};
use crate::ingest::Ingester;
use crate::metrics::Metrics;
use crate::proto::query::query_service_server::QueryServiceServer;
use crate::query::QueryEngine;
use crate::receive::admission::{Admission, Budget};
use crate::receive::grpc::OtlpGrpcReceiver;
use crate::receive::http::HttpState;
use crate::receive::http_router;
use crate::schema::path;
use crate::storage::{self, Storage};
use crate::wal::{self, Wal, WalConfig, WalPosition, WalStats};

/// The sockets a server answers on.
pub struct Listeners {
    /// OTLP/gRPC and the gRPC query service.
    pub grpc: TcpListener,
    /// OTLP/HTTP and every HTTP route.
    pub http: TcpListener,
    /// Arrow Flight SQL, if served.
    pub flight: Option<TcpListener>,
    /// The PostgreSQL wire protocol, if served.
    pub pg: Option<TcpListener>,
}

/// A running server.
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    flight_addr: Option<SocketAddr>,
    pg_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    ingester: Arc<Ingester>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts serving on the given listeners; returns at once (replay runs in the
    /// background; see [`Server::is_ready`]).
    pub async fn start(
        config: ServeConfig,
        grpc: TcpListener,
        http: TcpListener,
    ) -> anyhow::Result<Self> {
        let listeners = Listeners {
            grpc,
            http,
            flight: None,
            pg: None,
        };
        Self::start_on(config, listeners).await
    }

    /// [`Server::start`] on every listener of `listeners`.
    pub async fn start_on(config: ServeConfig, listeners: Listeners) -> anyhow::Result<Self> {
        let Listeners {
            grpc,
            http,
            flight,
            pg,
        } = listeners;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let flight_addr = flight.as_ref().map(TcpListener::local_addr).transpose()?;
        let pg_addr = pg.as_ref().map(TcpListener::local_addr).transpose()?;
        let auth = Arc::new(match &config.api_keys {
            Some(path) => Auth::load(path)?,
            None => Auth::open(),
        });
        if auth.is_open() && !config.allow_unauthenticated {
            for addr in [grpc_addr, http_addr]
                .into_iter()
                .chain(flight_addr)
                .chain(pg_addr)
            {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "refusing to listen on {addr} without API keys: anyone who can reach it could \
                     read and write every workspace. Pass --api-keys FILE, or \
                     --allow-unauthenticated to accept that."
                );
            }
        }
        let wal_dir = config.data_dir.join(path::WAL_DIR);
        std::fs::create_dir_all(&wal_dir)
            .with_context(|| format!("creating {}", wal_dir.display()))?;
        let lock = storage::lock_data_dir(&config.data_dir).context("locking the data dir")?;
        let storage = open_storage(&config).await?;
        crate::migrate::adopt(&config.data_dir, &storage)
            .await
            .with_context(|| {
                format!(
                    "adopting the Parquet tree of an earlier version in {}",
                    config.data_dir.display()
                )
            })?;
        let catalog = Arc::new(Catalog::open(&storage, true).await);
        let staging = Staging::of(&storage, &config.data_dir);
        staging
            .clean()
            .with_context(|| format!("cleaning {}", staging.root.display()))?;

        let metrics = Arc::new(Metrics::default());
        let buffer = Arc::new(Buffer::new(FlushThresholds {
            rows: config.flush_rows,
            bytes: config.flush_bytes,
        }));
        let ingester = Arc::new(Ingester::new(buffer.clone(), config.buffer_max_bytes));
        let shutdown = CancellationToken::new();
        let stop_accepting = CancellationToken::new();

        let engine = Arc::new(
            QueryEngine::new(
                storage.clone(),
                catalog.clone(),
                Some(buffer.clone()),
                config.query.limits(),
            )
            .context("starting the query engine")?
            .with_ready({
                let ingester = ingester.clone();
                move || ingester.is_ready()
            }),
        );
        metrics.attach_queries(engine.running());
        let query_service = QueryServiceServer::new(QueryGrpc::new(engine.clone(), auth.clone()));
        let budget = Budget::new(config.max_inflight_bytes, config.max_message_bytes as u64);
        metrics.attach_budget(budget.clone());
        let admission =
            |front| Admission::new(front, config.max_concurrent_requests, budget.clone());
        let http_app = http_router(HttpState {
            ingester: ingester.clone(),
            metrics: metrics.clone(),
            max_body_bytes: config.max_message_bytes,
            auth: auth.clone(),
            admission: admission("the HTTP front end"),
        })
        .merge(crate::api::router(ApiState {
            engine: engine.clone(),
            auth: auth.clone(),
        }));
        let http_stop = stop_accepting.clone();
        let http_task = tokio::spawn(async move {
            axum::serve(http, http_app)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
        });
        let flight_server = flight.map(|listener| {
            let service = FlightSql::new(engine.clone(), auth.clone()).into_server();
            let stop = stop_accepting.clone();
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled(),
                    )
                    .await
            }
        });
        let pg_server = match pg {
            Some(listener) => {
                let tls = config
                    .pg_tls_cert
                    .as_deref()
                    .zip(config.pg_tls_key.as_deref());
                let server = PgWire::new(engine.clone(), auth.clone(), tls)
                    .context("starting the PostgreSQL front end")?;
                Some(server.serve(listener, stop_accepting.clone()))
            }
            None => None,
        };
        let receiver = OtlpGrpcReceiver::new(
            ingester.clone(),
            auth,
            metrics.clone(),
            config.max_message_bytes,
            admission("the OTLP/gRPC front end"),
        );
        let grpc_stop = stop_accepting.clone();
        // The gRPC listeners (OTLP with the query service, and Flight SQL) and the
        // PostgreSQL one in one task.
        let grpc_task = tokio::spawn(async move {
            let otlp = tonic::transport::Server::builder()
                .add_service(receiver)
                .add_service(query_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc),
                    grpc_stop.cancelled(),
                );
            let flight = async move {
                match flight_server {
                    Some(server) => server.await,
                    None => Ok(()),
                }
            };
            let pg = async move {
                if let Some(server) = pg_server {
                    server.await;
                }
            };
            let (otlp, flight, ()) = tokio::join!(otlp, flight, pg);
            otlp.and(flight)
        });

        let task = tokio::spawn(run(
            lock,
            config,
            storage,
            catalog,
            engine,
            metrics,
            buffer,
            ingester.clone(),
            shutdown.clone(),
            stop_accepting,
            http_task,
            grpc_task,
        ));
        Ok(Self {
            grpc_addr,
            http_addr,
            flight_addr,
            pg_addr,
            shutdown,
            ingester,
            task,
        })
    }

    /// The gRPC listener's address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The Flight SQL listener's address, if it serves one.
    pub fn flight_addr(&self) -> Option<SocketAddr> {
        self.flight_addr
    }

    /// The PostgreSQL listener's address, if it serves one.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// Whether the WAL is replayed and ingestion is open.
    pub fn is_ready(&self) -> bool {
        self.ingester.is_ready()
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Stops accepting, flushes every buffer to Parquet, and returns when done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    lock: std::fs::File,
    config: ServeConfig,
    storage: Arc<Storage>,
    catalog: Arc<Catalog>,
    engine: Arc<QueryEngine>,
    metrics: Arc<Metrics>,
    buffer: Arc<Buffer>,
    ingester: Arc<Ingester>,
    shutdown: CancellationToken,
    stop_accepting: CancellationToken,
    http_task: JoinHandle<std::io::Result<()>>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let wal_dir = data_dir.join(path::WAL_DIR);
    let committed = storage
        .committed_position()
        .await
        .context("reading this node's last flush from the table")?;
    let replay_buffer = buffer.clone();
    let replay_dir = data_dir.clone();
    let replay_storage = storage.clone();
    let skip_corrupt = config.wal_skip_corrupt;
    let runtime = tokio::runtime::Handle::current();
    let summary = tokio::task::spawn_blocking(move || {
        replay(
            &runtime,
            &replay_storage,
            &replay_dir,
            &replay_buffer,
            committed,
            skip_corrupt,
        )
    })
    .await
    .context("replay panicked")??;
    info!(
        records = summary.records,
        rows = summary.rows,
        cut_tails = summary.cut_tails,
        skipped_corrupt_bytes = summary.skipped_bytes,
        "Replayed the write-ahead log."
    );
    let stats = Arc::new(WalStats::default());
    stats
        .bytes_on_disk
        .store(summary.bytes_on_disk, Ordering::Relaxed);
    let sink_buffer = buffer.clone();
    let wal = Arc::new(
        Wal::start(
            WalConfig {
                dir: wal_dir,
                sync: config.wal_sync,
                queue_capacity: config.wal_queue,
                max_bytes: config.wal_max_bytes,
                max_record_len: wal::MAX_RECORD_LEN,
            },
            summary.next_segment,
            stats.clone(),
            Box::new(move |segment, workspace, batch| sink_buffer.push(segment, workspace, batch)),
        )
        .context("starting the WAL writer")?,
    );
    metrics.attach(stats, buffer.clone());
    ingester.set_ready(wal.clone());
    println!(
        "spanlake: ready (replayed {} WAL records, {} spans)",
        summary.records, summary.rows
    );
    tokio::spawn(async move { engine.warm_up().await });

    let flusher = Arc::new(Flusher::new(
        storage.clone(),
        catalog.clone(),
        &data_dir,
        buffer,
        wal.clone(),
        metrics,
        config.flush_interval,
    ));
    let flusher_task = tokio::spawn(flusher.clone().run(shutdown.clone()));
    let maintenance_task = tokio::spawn(crate::maintain::run(
        storage.clone(),
        catalog.clone(),
        data_dir.clone(),
        crate::maintain::MaintenanceConfig {
            target_bytes: config.compact_target_bytes,
            interval: config.maintenance_interval,
            retention: config.retention,
            keep_removed: config.query.query_timeout + config.vacuum_grace,
        },
        shutdown.clone(),
    ));

    let index_task = tokio::spawn(crate::catalog::table::run(
        catalog.clone(),
        storage.clone(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    info!("Shutting down: no new requests; finishing those in flight.");
    stop_accepting.cancel();
    let http = http_task.await;
    let grpc = grpc_task.await;
    let _ = flusher_task.await;
    let _ = maintenance_task.await;
    info!("Flushing every buffer to the table.");
    let flushed = flusher.checkpoint().await;
    wal.stop();
    flushed.context("final flush")?;
    let _ = index_task.await;
    if let Err(e) = catalog.sync(&storage).await {
        warn!(error = %e, "Syncing the trace index table failed; the next start summarizes the newest files again.");
    }
    http.context("HTTP server panicked")?
        .context("HTTP server failed")?;
    grpc.context("gRPC server panicked")?
        .context("gRPC server failed")?;
    info!("Stopped.");
    drop(lock);
    Ok(())
}

/// Opens (or creates) the table `config` names, under this node's id.
async fn open_storage(config: &ServeConfig) -> anyhow::Result<Arc<Storage>> {
    let node_id = storage::node_id(&config.data_dir, config.node_id.as_deref())
        .context("reading this node's id")?;
    let location = crate::config::storage_location(&config.data_dir, config.storage.as_deref());
    let url = storage::parse_location(&location)?;
    if let (Ok(root), Ok(data)) = (url.to_file_path(), config.data_dir.canonicalize()) {
        // Vacuum deletes what the table's log does not name: never the WAL.
        anyhow::ensure!(
            !data.starts_with(&root),
            "--storage {location} holds the data dir {}: put the table beside it (the default is {})",
            config.data_dir.display(),
            config.data_dir.join(path::TABLE_DIR).display()
        );
    }
    let storage = Storage::open(url, node_id, true)
        .await
        .with_context(|| format!("opening the table of spans at {location}"))?;
    storage
        .claim(&config.data_dir)
        .await
        .context("claiming this node's id in the table")?;
    info!(table = %storage.url(), node = storage.node_id(), "Opened the table of spans.");
    Ok(Arc::new(storage))
}

/// Replays the WAL into `buffer` from `committed` on, flushing to the table whenever a
/// threshold is passed.
fn replay(
    runtime: &tokio::runtime::Handle,
    storage: &Storage,
    data_dir: &Path,
    buffer: &Buffer,
    committed: Option<WalPosition>,
    skip_corrupt: bool,
) -> anyhow::Result<wal::ReplaySummary> {
    let wal_dir = data_dir.join(path::WAL_DIR);
    let staging = Staging::of(storage, data_dir);
    let summary = wal::replay(
        &wal_dir,
        skip_corrupt,
        committed,
        |position, segment, workspace, chunk| {
            buffer.push(segment, workspace, chunk);
            if buffer.over_threshold() {
                flush_replayed(runtime, storage, &staging, &wal_dir, buffer, position)
                    .map_err(std::io::Error::other)?;
            }
            Ok(())
        },
    )
    .with_context(|| format!("replaying the WAL in {}", wal_dir.display()))?;
    Ok(summary)
}

//! Every setting, as command-line flags; each flag also reads `SPANLAKE_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::wal::WalSync;

/// spanlake: a trace store for OpenTelemetry and LLM-observability spans.
#[derive(Debug, Parser)]
#[command(name = "spanlake", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive OTLP traces and store them as Parquet.
    Serve(Box<ServeConfig>),
    /// Run read-only SQL over a workspace's spans in the table, without a server.
    Sql(SqlArgs),
    /// Adopt a data dir written by an earlier version (loose Parquet tree) into the table;
    /// `serve` does the same on start.
    Migrate(MigrateArgs),
    /// Send synthetic OTLP traffic to a server and report throughput and latency.
    Loadgen(crate::loadgen::LoadgenArgs),
}

const MIB: usize = 1024 * 1024;

/// Settings of `spanlake serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// This node's local directory: its WAL, its node id and, unless `--storage` says
    /// otherwise, the table of spans (`<data-dir>/spans`).
    #[arg(long, env = "SPANLAKE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where the Delta table of spans lives: a directory, or `s3://bucket/prefix` (with the
    /// usual `AWS_*` variables; `AWS_ENDPOINT_URL` for an S3-compatible server). Several
    /// nodes may share one table. Default: `<data-dir>/spans`.
    #[arg(long, env = "SPANLAKE_STORAGE")]
    pub storage: Option<String>,
    /// This node's id, unique among the nodes writing one table (its WAL position is kept
    /// in the table under it). Default: generated once and kept in `<data-dir>/node-id`.
    #[arg(long, env = "SPANLAKE_NODE_ID")]
    pub node_id: Option<String>,
    /// Compaction merges the small files of each closed hour of a workspace into files of
    /// about this many bytes.
    #[arg(long, env = "SPANLAKE_COMPACT_TARGET_BYTES", default_value_t = 256 * MIB as u64)]
    pub compact_target_bytes: u64,
    /// How often compaction and retention look for work (`0s` turns both off).
    #[arg(long, env = "SPANLAKE_MAINTENANCE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub maintenance_interval: Duration,
    /// Remove spans whose hour ended longer ago than this (e.g. `30d`); default: keep all.
    #[arg(long, env = "SPANLAKE_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Vacuum deletes a file removed from the table (by compaction or retention) once it
    /// was removed longer ago than `--query-timeout` plus this (outside readers on an older
    /// version need it as long).
    #[arg(long, env = "SPANLAKE_VACUUM_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub vacuum_grace: Duration,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "SPANLAKE_GRPC_ADDR", default_value = "127.0.0.1:4317")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (OTLP/HTTP and every other route).
    #[arg(long, env = "SPANLAKE_HTTP_ADDR", default_value = "127.0.0.1:4318")]
    pub http_addr: SocketAddr,
    /// Arrow Flight SQL listen address (analysts' SQL from ADBC, JDBC, DBeaver, …); `off`
    /// opens no listener.
    // (Spelled out so clap parses the value, `off` included, instead of making it optional.)
    #[arg(long, env = "SPANLAKE_FLIGHT_ADDR", default_value = "127.0.0.1:4319", value_parser = parse_listen)]
    pub flight_addr: ::std::option::Option<SocketAddr>,
    /// PostgreSQL wire protocol listen address (psql, psycopg, Grafana, Metabase, …; the
    /// password is an API key); `off` opens no listener.
    #[arg(long, env = "SPANLAKE_PG_ADDR", default_value = "127.0.0.1:5433", value_parser = parse_listen)]
    pub pg_addr: ::std::option::Option<SocketAddr>,
    /// PEM certificate chain for TLS on the PostgreSQL port (with `--pg-tls-key`); clients
    /// may then ask for `sslmode=require`, so passwords (API keys) do not cross the wire in
    /// clear.
    #[arg(long, env = "SPANLAKE_PG_TLS_CERT", requires = "pg_tls_key")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key of `--pg-tls-cert`.
    #[arg(long, env = "SPANLAKE_PG_TLS_KEY", requires = "pg_tls_cert")]
    pub pg_tls_key: Option<PathBuf>,
    /// `always`: acknowledge after fsync (group commit). `none`: acknowledge after the
    /// write reaches the OS, before fsync — a machine crash can lose acknowledged spans.
    #[arg(long, env = "SPANLAKE_WAL_SYNC", value_enum, default_value = "always")]
    pub wal_sync: WalSync,
    /// Largest request (gRPC message or HTTP body), in bytes, after decompression.
    #[arg(long, env = "SPANLAKE_MAX_MESSAGE_BYTES", default_value_t = 64 * MIB)]
    pub max_message_bytes: usize,
    /// Flush the buffer to Parquet once it holds this many rows.
    #[arg(long, env = "SPANLAKE_FLUSH_ROWS", default_value_t = 1_000_000)]
    pub flush_rows: u64,
    /// Flush the buffer to Parquet once it holds this many bytes.
    #[arg(long, env = "SPANLAKE_FLUSH_BYTES", default_value_t = 128 * MIB as u64)]
    pub flush_bytes: u64,
    /// Flush buffered spans at the latest this long after they arrived (e.g. `30s`, `500ms`).
    #[arg(long, env = "SPANLAKE_FLUSH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Refuse ingestion (503 / UNAVAILABLE) while the buffer holds this many bytes.
    #[arg(long, env = "SPANLAKE_BUFFER_MAX_BYTES", default_value_t = 384 * MIB as u64)]
    pub buffer_max_bytes: u64,
    /// Refuse ingestion (503 / UNAVAILABLE) while WAL segments on disk hold this many bytes.
    #[arg(long, env = "SPANLAKE_WAL_MAX_BYTES", default_value_t = 4096 * MIB as u64)]
    pub wal_max_bytes: u64,
    /// On start, skip WAL records that cannot be read (not a torn tail) instead of
    /// refusing to start; the spans in them are lost and the skip is logged.
    #[arg(long, env = "SPANLAKE_WAL_SKIP_CORRUPT")]
    pub wal_skip_corrupt: bool,
    /// Requests that may wait for the WAL writer at once; more are refused as overload.
    #[arg(long, env = "SPANLAKE_WAL_QUEUE", default_value_t = 4096)]
    pub wal_queue: usize,
    /// Bytes all ingest requests in flight may hold together (body, decompressed body,
    /// decoded request); a request that would pass it is refused with 503 / UNAVAILABLE
    /// before its work is done.
    #[arg(long, env = "SPANLAKE_MAX_INFLIGHT_BYTES", default_value_t = 128 * MIB as u64)]
    pub max_inflight_bytes: u64,
    /// Ingest requests each front end (OTLP/gRPC, HTTP) serves at once; more are refused
    /// with 503 / UNAVAILABLE at once.
    #[arg(long, env = "SPANLAKE_MAX_CONCURRENT_REQUESTS", default_value_t = 32)]
    pub max_concurrent_requests: usize,
    /// Query limits.
    #[command(flatten)]
    pub query: QueryArgs,
    /// API keys (TOML: `[[keys]]` with `key`, `workspaces`, `scopes` = ingest/read).
    /// Without it every request is allowed and only loopback addresses may be bound.
    #[arg(long, env = "SPANLAKE_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Allow binding a non-loopback address without `--api-keys` (anyone who can reach
    /// the port can write and read every workspace).
    #[arg(long, env = "SPANLAKE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
}

/// Limits of SQL and API queries.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Memory all running queries may use together, in bytes; a query needing more fails.
    #[arg(long, env = "SPANLAKE_QUERY_MEMORY_BYTES", default_value_t = 512 * MIB)]
    pub query_memory_bytes: usize,
    /// How long one query may run, its whole answer included (e.g. `30s`).
    #[arg(long, env = "SPANLAKE_QUERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Bytes of a JSON answer of the SQL route before it is cut (the answer says so); CSV
    /// and Arrow answers stream and have no such cap.
    #[arg(long, env = "SPANLAKE_SQL_MAX_JSON_BYTES", default_value_t = 32 * MIB)]
    pub sql_max_json_bytes: usize,
}

impl QueryArgs {
    /// As query limits.
    pub fn limits(&self) -> crate::query::QueryLimits {
        crate::query::QueryLimits {
            memory_bytes: self.query_memory_bytes,
            timeout: self.query_timeout,
            max_json_bytes: self.sql_max_json_bytes,
        }
    }
}

/// How `spanlake sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// One JSON object per row, in a JSON array.
    Json,
    /// CSV with a header.
    Csv,
}

/// Settings of `spanlake sql`.
#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// The data dir of `spanlake serve` (the table is `<data-dir>/spans` by default).
    #[arg(long, env = "SPANLAKE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where the Delta table of spans lives (as for `spanlake serve`).
    #[arg(long, env = "SPANLAKE_STORAGE")]
    pub storage: Option<String>,
    /// The workspace to query.
    #[arg(long, env = "SPANLAKE_WORKSPACE", default_value = "default")]
    pub workspace: String,
    /// Output format.
    #[arg(long, env = "SPANLAKE_FORMAT", value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Query limits.
    #[command(flatten)]
    pub query: QueryArgs,
    /// The query (read-only: SELECT, WITH, EXPLAIN, SHOW, DESCRIBE).
    pub sql: String,
}

/// Settings of `spanlake migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The data dir holding the earlier version's tree.
    #[arg(long, env = "SPANLAKE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where the Delta table of spans lives (as for `spanlake serve`).
    #[arg(long, env = "SPANLAKE_STORAGE")]
    pub storage: Option<String>,
    /// The node id `spanlake serve` runs this data dir under (as for `spanlake serve`).
    #[arg(long, env = "SPANLAKE_NODE_ID")]
    pub node_id: Option<String>,
}

impl ServeConfig {
    /// The defaults with another data directory (for tests and embedding).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let mut serve = Defaults::parse_from(["spanlake"]).serve;
        serve.data_dir = data_dir.into();
        serve
    }
}

/// The table's location: `--storage`, or `<data-dir>/spans`.
pub fn storage_location(data_dir: &std::path::Path, storage: Option<&str>) -> String {
    match storage {
        Some(s) => s.to_string(),
        None => data_dir
            .join(crate::schema::path::TABLE_DIR)
            .to_string_lossy()
            .into_owned(),
    }
}

/// A listen address, or `off` (no listener: `None`).
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim() {
        "off" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| format!("{e}: expected HOST:PORT (an IP address) or `off`")),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `30d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m, 1h or 30d"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_may_be_off() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(
            parse_listen("0.0.0.0:5433").unwrap(),
            "0.0.0.0:5433".parse().ok()
        );
        assert!(parse_listen("localhost").unwrap_err().contains("`off`"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = ServeConfig::with_data_dir("/tmp/x");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:4318");
        assert_eq!(c.flight_addr, "127.0.0.1:4319".parse().ok());
        assert_eq!(c.pg_addr, "127.0.0.1:5433".parse().ok());
        assert_eq!(c.wal_sync, WalSync::Always);
        assert_eq!(c.max_message_bytes, 64 * MIB);
    }
}

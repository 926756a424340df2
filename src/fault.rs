//! Fault injection for tests: fail or crash at a named step of the write path.
//!
//! Input: the environment variable `SPANLAKE_FAULT=<point>:<action>[:<nth>][,…]`, read once;
//! `action` is `error` (the step returns an injected I/O error) or `crash` (the process
//! aborts at once, as under `kill -9`); `nth` (default 1) is which hit of the point acts,
//! `0` every hit. Output: [`hit`] at each point. Invariants: without the variable every
//! point costs one initialized `OnceLock` read.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Before a group of WAL records is written.
pub const WAL_WRITE: &str = "wal.write";
/// After a group is written, before its fsync.
pub const WAL_FSYNC: &str = "wal.fsync";
/// After a new WAL segment file is created, before its header is written (the first hit
/// is the segment opened at start).
pub const WAL_ROTATE: &str = "wal.rotate";
/// When a failed group write is being cut back out of the segment.
pub const WAL_UNDO: &str = "wal.undo";
/// Before the new WAL checkpoint replaces the old one.
pub const WAL_CHECKPOINT: &str = "wal.checkpoint";
/// After a data file (of a flush, a compaction or a migration) is written, before it is
/// fsynced.
pub const FLUSH_STAGE: &str = "flush.stage";
/// After a flush's files are durable, before its Delta commit.
pub const FLUSH_COMMIT: &str = "flush.commit";
/// After a flush's Delta commit, before its files are shown to queries, its chunks
/// dropped from the buffer and the WAL checkpoint moved.
pub const FLUSH_PUBLISH: &str = "flush.publish";
/// After a compaction's files are durable, before its commit.
pub const COMPACT_COMMIT: &str = "compact.commit";
/// Before a retention's commit.
pub const RETENTION_COMMIT: &str = "retention.commit";

/// The environment variable that arms a fault.
pub const ENV: &str = "SPANLAKE_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Error,
    Crash,
}

struct Fault {
    point: String,
    action: Action,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return Vec::new();
        };
        spec.split(',')
            .filter_map(|one| {
                let mut parts = one.trim().split(':');
                let point = parts.next()?.to_string();
                let action = match parts.next()? {
                    "error" => Action::Error,
                    "crash" => Action::Crash,
                    _ => return None,
                };
                let nth = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                Some(Fault {
                    point,
                    action,
                    nth,
                    hits: AtomicU64::new(0),
                })
            })
            .collect()
    })
}

/// Passes the point `name`: `Err` or a crash if a fault is armed for this hit of it.
pub fn hit(name: &str) -> io::Result<()> {
    let Some(fault) = armed().iter().find(|f| f.point == name) else {
        return Ok(());
    };
    let hit = fault.hits.fetch_add(1, Ordering::Relaxed) + 1;
    if fault.nth != 0 && hit != fault.nth {
        return Ok(());
    }
    match fault.action {
        Action::Crash => {
            eprintln!("spanlake: injected crash at {name}");
            std::process::abort()
        }
        Action::Error => Err(io::Error::other(format!("injected fault at {name}"))),
    }
}

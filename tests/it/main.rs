//! Integration tests: the real server on loopback listeners, real clients.

mod admission;
mod auth;
mod common;
mod crash;
mod disk_full;
mod exporters;
mod faults;
mod flight;
mod fuzz_regressions;
mod grpc;
mod hostile_ingest;
mod hostile_sql;
mod http;
mod index;
mod json_equivalence;
mod loadgen;
mod pg;
mod query;
mod s3;
mod table;
mod vendor;

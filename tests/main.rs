//! End-to-end tests: one binary, a module per area. Every test starts its own `quiverd` on a
//! free 127.0.0.1 port with a temporary data directory.
mod auth;
mod bad_input;
mod basic;
mod cluster;
mod compaction;
mod crash;
mod filters;
mod fuzz_seeds;
mod hostile;
mod hybrid;
mod index;
mod ingest;
mod limits;
mod llm;
mod otlp;
mod rag;
mod snapshots;
mod tls;

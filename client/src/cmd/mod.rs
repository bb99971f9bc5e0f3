//! The `quiver` commands, one module per group. Each module owns its clap types and the
//! functions that run them; `main.rs` only parses and dispatches.
pub mod audit;
pub mod cluster;
pub mod collection;
pub mod common;
pub mod keys;
pub mod points;
pub mod rag;
pub mod review;
pub mod search;
pub mod snapshot;

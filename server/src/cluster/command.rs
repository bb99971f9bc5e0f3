//! What the replicated log carries: [`quiver_storage::Mutation`]s, encoded by the storage
//! layer ([`Command`] is [`quiver_storage::Encoded`]), and the state machine's answer to each.
//! Replication only transports and orders them; the engine applies them
//! ([`quiver_storage::Engine::apply`]).
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Kind};

pub use quiver_storage::engine::REPLICATED_PREFIX;
pub use quiver_storage::{Applied as Outcome, Encoded as Command, Mutation};

/// A failed write, as its kind and message (deterministic: every node gets the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: Kind,
    /// Message.
    pub message: String,
}

impl From<&ApiError> for Failure {
    fn from(e: &ApiError) -> Failure {
        Failure {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> ApiError {
        ApiError::Failed {
            kind: f.kind,
            message: f.message,
        }
    }
}

/// The state machine's answer to one log entry.
pub type Reply = Result<Outcome, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's transport encoding (bincode) carries an encoded mutation's bytes unchanged.
    #[test]
    fn commands_roundtrip_through_bincode() {
        let w = Mutation::CasRecord {
            key: "rag/review/1".into(),
            expect: Some(b"old".to_vec()),
            value: Some(b"new".to_vec()),
        };
        let bytes = bincode::serialize(&w.encode()).expect("encode");
        let back: Command = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(Mutation::decode(&back).expect("mutation"), w);
    }
}

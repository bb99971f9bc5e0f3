//! `quiver.v1.Keys`: API key management (admin keys only; enforced by the auth layer).
use std::sync::Arc;

use quiver_proto::v1 as pb;
use quiver_proto::v1::keys_server::Keys;
use tonic::{Request, Response, Status};

use crate::auth::{self, KeyStore, Role};
use crate::error::ApiError;
use crate::grpc::{AppState, blocking};
use quiver_storage::Mutation;

/// The Keys service.
#[derive(Debug, Clone)]
pub struct KeysService {
    state: Arc<AppState>,
}

impl KeysService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        KeysService { state }
    }

    fn store(&self) -> Result<KeyStore, Status> {
        Ok(KeyStore::new(self.state.engine()?.aux()))
    }
}

/// The calling key's collections (empty: all, or auth off).
fn scope_of<T>(req: &Request<T>) -> Vec<String> {
    req.extensions()
        .get::<auth::Principal>()
        .map(|p| p.collections.clone())
        .unwrap_or_default()
}

fn put(record: &auth::KeyRecord) -> Result<Mutation, Status> {
    Ok(Mutation::PutRecord {
        key: auth::record_key(&record.id),
        value: Some(serde_json::to_vec(record).map_err(|e| ApiError::Internal(e.to_string()))?),
    })
}

#[tonic::async_trait]
impl Keys for KeysService {
    async fn create(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let scope = scope_of(&req);
        let r = req.into_inner();
        if !auth::within_scope(&scope, &r.collections) {
            return Err(ApiError::PermissionDenied(format!(
                "this key is limited to collections {scope:?} and cannot mint a key for {}",
                if r.collections.is_empty() {
                    "all collections".to_owned()
                } else {
                    format!("{:?}", r.collections)
                }
            ))
            .into());
        }
        let role = Role::from_proto(r.role)
            .ok_or_else(|| ApiError::bad("role", format!("unknown role {}", r.role)))?;
        for (i, c) in r.collections.iter().enumerate() {
            quiver_storage::types::validate_collection_name(c)
                .map_err(|e| ApiError::bad(format!("collections[{i}]"), e.to_string()))?;
        }
        if r.name.len() > 200 {
            return Err(ApiError::bad("name", "at most 200 bytes").into());
        }
        let (secret, record) = auth::new_key(r.name, role, r.collections);
        self.state.write(put(&record)?).await?;
        tracing::info!(target: "quiver::audit", key = %record.id, role = ?record.role, "API key created");
        Ok(Response::new(pb::CreateKeyResponse {
            key: secret,
            info: Some(record.info()),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let scope = scope_of(&req);
        let store = self.store()?;
        let keys = blocking(move || Ok(store.list()?)).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys
                .iter()
                .filter(|k| auth::within_scope(&scope, &k.collections))
                .map(auth::KeyRecord::info)
                .collect(),
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let scope = scope_of(&req);
        let id = req.into_inner().id;
        let store = self.store()?;
        let lookup = id.clone();
        let mut record = blocking(move || Ok(store.get(&lookup)?))
            .await?
            .filter(|k| auth::within_scope(&scope, &k.collections))
            .ok_or_else(|| ApiError::NotFound(format!("no API key {id:?}")))?;
        record.revoked = true;
        self.state.write(put(&record)?).await?;
        tracing::info!(target: "quiver::audit", key = %record.id, "API key revoked");
        Ok(Response::new(record.info()))
    }
}

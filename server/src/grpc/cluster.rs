//! `quiver.v1.Cluster`: status and membership of a replicated deployment.
use std::sync::Arc;

use quiver_proto::v1 as pb;
use quiver_proto::v1::cluster_server::Cluster as ClusterRpc;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::grpc::AppState;

/// The Cluster service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    state: Arc<AppState>,
}

impl ClusterService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        ClusterService { state }
    }

    fn cluster(&self) -> Result<&Arc<Cluster>, Status> {
        self.state.cluster().ok_or_else(|| {
            ApiError::Precondition(
                "replication is off: start quiverd with --cluster-listen, --node-id and --peers"
                    .into(),
            )
            .into()
        })
    }
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        match self.state.cluster() {
            Some(c) => Ok(Response::new(c.status().await)),
            None => Ok(Response::new(pb::ClusterStatusResponse::default())),
        }
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let c = self.cluster()?;
        let r = req.into_inner();
        c.add_node(r.id, r.cluster_addr, r.learner_only).await?;
        Ok(Response::new(c.status().await))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let c = self.cluster()?;
        c.remove_node(req.into_inner().id).await?;
        Ok(Response::new(c.status().await))
    }
}

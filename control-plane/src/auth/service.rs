//! `switchyard.v1.TokenService`: creating, listing and revoking bearer
//! tokens (admin only, enforced by the auth layer before a call gets here).

use std::sync::Arc;

use switchyard::pb;
use switchyard::validate::{Invalid, Violations};
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use super::{Caller, Tokens, hash, new_secret};
use crate::status::{invalid_argument, status};
use crate::store::{Role, Store, TokenRow, now_ms};

/// The `TokenService` implementation over any [`Store`].
#[derive(Debug)]
pub struct TokenService<S> {
    store: Arc<S>,
    tokens: Arc<Tokens>,
}

impl<S: Store> TokenService<S> {
    /// Manages the tokens of `store`; `tokens` (this replica's cache) is
    /// reloaded after each change so that it takes effect here at once.
    pub fn new(store: Arc<S>, tokens: Arc<Tokens>) -> Self {
        Self { store, tokens }
    }

    async fn reload(&self) {
        if let Err(error) = self.tokens.reload(self.store.as_ref()).await {
            // Other replicas, and this one at its next poll, catch up.
            warn!(%error, "reloading tokens after a change");
        }
    }
}

/// A stored role as the API names it.
pub fn pb_role(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::Reader => pb::Role::Reader,
        Role::Agent => pb::Role::Agent,
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn to_pb(row: &TokenRow) -> pb::Token {
    pb::Token {
        name: row.name.clone(),
        role: pb_role(row.role) as i32,
        node: row.node.clone(),
        created_at: Some(timestamp(row.created_at_ms)),
        created_by: row.created_by.clone(),
        revoked_at: row.revoked_at_ms.map(timestamp),
    }
}

/// Checks a CreateToken request: a valid name, a known role, and a node
/// for agent tokens only.
fn check(req: &pb::CreateTokenRequest) -> Result<Role, Invalid> {
    let mut v = Violations::new();
    switchyard::validate::name(&mut v, "name", &req.name);
    let role = match pb::Role::try_from(req.role) {
        Ok(pb::Role::Admin) => Some(Role::Admin),
        Ok(pb::Role::Reader) => Some(Role::Reader),
        Ok(pb::Role::Agent) => Some(Role::Agent),
        _ => {
            v.push("role", "must be ROLE_ADMIN, ROLE_READER or ROLE_AGENT");
            None
        }
    };
    match role {
        Some(Role::Agent) => switchyard::validate::name(&mut v, "node", &req.node),
        Some(_) if !req.node.is_empty() => {
            v.push("node", "only agent tokens are bound to a node");
        }
        _ => {}
    }
    v.finish(role.unwrap_or(Role::Reader))
}

#[tonic::async_trait]
impl<S: Store> pb::token_service_server::TokenService for TokenService<S> {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let role = check(&req).map_err(invalid_argument)?;
        let secret = new_secret(&req.name).map_err(|e| {
            error!(error = %e, "no randomness for a token secret");
            Status::internal(
                "could not generate a secret; the details are in the control plane's log",
            )
        })?;
        let row = TokenRow {
            name: req.name,
            role,
            node: req.node,
            hash: hash(&secret),
            created_at_ms: now_ms(),
            created_by: caller.principal.to_string(),
            revoked_at_ms: None,
        };
        self.store.create_token(row.clone()).await.map_err(status)?;
        self.reload().await;
        info!(token = %row.name, role = role.as_str(), by = %caller.principal, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(to_pb(&row)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let rows = self.store.tokens().await.map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: rows.iter().map(to_pb).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        switchyard::validate::name(&mut v, "name", &req.name);
        v.finish(()).map_err(invalid_argument)?;
        let row = self
            .store
            .revoke_token(&req.name, now_ms())
            .await
            .map_err(status)?;
        self.reload().await;
        info!(token = %row.name, by = %caller.principal, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(to_pb(&row)),
        }))
    }
}

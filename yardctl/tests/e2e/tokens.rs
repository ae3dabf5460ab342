//! `token create|list|revoke` as the binary runs them: the secret alone on
//! stdout, the note on stderr, refusals as one line and exit 2.
//!
//! The control plane of this crate's tests does not serve TokenService yet,
//! so these tests serve a small in-memory stand-in that keeps to the
//! contract in `proto/switchyard/v1/token.proto` (admin callers only,
//! secrets shown once, revocation kept in the list). What they check is
//! yardctl's side of that contract.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use switchyard::pb;
use switchyard::pb::operator_service_server::OperatorServiceServer;
use switchyard::pb::token_service_server::{TokenService, TokenServiceServer};
use switchyard_control_plane::grpc::{Head, Operator};
use switchyard_control_plane::testing::{TempDir, TestDb};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};

use crate::support::{Run, command, run};

/// The bearer secret the stand-in takes for an admin.
const ADMIN: &str = "admin-secret";

/// Tokens in memory, as the control plane keeps them (minus the hashing).
#[derive(Debug, Default)]
struct StandIn {
    tokens: Mutex<BTreeMap<String, (pb::Token, String)>>,
}

#[tonic::async_trait]
impl TokenService for StandIn {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let wanted = request.into_inner();
        let mut tokens = self.tokens.lock().unwrap();
        if tokens.contains_key(&wanted.name) {
            return Err(Status::already_exists(format!(
                "token {} already exists",
                wanted.name
            )));
        }
        let token = pb::Token {
            name: wanted.name.clone(),
            role: wanted.role,
            node: wanted.node,
            created_at: Some(std::time::SystemTime::now().into()),
            created_by: "token/admin".into(),
            revoked_at: None,
        };
        let secret = format!("sy_{}_0123456789abcdef", wanted.name);
        tokens.insert(wanted.name, (token.clone(), secret.clone()));
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.tokens.lock().unwrap();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.values().map(|(t, _)| t.clone()).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let name = request.into_inner().name;
        let mut tokens = self.tokens.lock().unwrap();
        let Some((token, _)) = tokens.get_mut(&name) else {
            return Err(Status::not_found(format!("token {name} not found")));
        };
        token
            .revoked_at
            .get_or_insert_with(|| std::time::SystemTime::now().into());
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token.clone()),
        }))
    }
}

/// Refuses callers as the control plane does: no token is UNAUTHENTICATED,
/// a token other than the admin's is PERMISSION_DENIED naming the role.
fn admins_only(request: Request<()>) -> Result<Request<()>, Status> {
    let bearer = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => Err(Status::unauthenticated("no bearer token")),
        Some(ADMIN) => Ok(request),
        Some(_) => Err(Status::permission_denied(
            "CreateToken needs the admin role; token/ci has the reader role",
        )),
    }
}

/// A gRPC server on 127.0.0.1 with `router`'s services, until `stop`.
struct Served {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    async fn start(router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        ));
        Self {
            url,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn as_admin(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["--token", ADMIN];
    all.extend_from_slice(args);
    run(command(url, &all)).await
}

/// Create prints the secret alone on stdout (so `> file` holds exactly it)
/// and says on stderr that it is not shown again; list and revoke show
/// what happened; `--node` is checked before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_and_revoke() {
    let stand_in = Arc::new(StandIn::default());
    let service =
        InterceptedService::new(TokenServiceServer::from_arc(stand_in.clone()), admins_only);
    let served = Served::start(tonic::transport::Server::builder().add_service(service)).await;
    let url = served.url.as_str();

    let tmp = TempDir::new();
    let file = tmp.path().join("ci.token");
    let mut to_file = command(
        url,
        &[
            "--token", ADMIN, "token", "create", "ci", "--role", "reader",
        ],
    );
    to_file.stdout(Stdio::from(File::create(&file).unwrap()));
    let created = run(to_file).await;
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "sy_ci_0123456789abcdef\n",
        "the secret and nothing else"
    );
    assert_eq!(
        created.stderr,
        "token/ci created with the reader role; keep its secret now: it is not shown again\n"
    );

    let edge = as_admin(
        url,
        &[
            "token", "create", "edge-1", "--role", "agent", "--node", "edge-1",
        ],
    )
    .await;
    assert_eq!(edge.ok(), "sy_edge-1_0123456789abcdef\n");

    let list = as_admin(url, &["token", "list"]).await;
    let rows: Vec<Vec<&str>> = list
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "ROLE", "NODE", "CREATED", "BY", "REVOKED"]
    );
    assert_eq!(rows[1][..3], ["ci", "reader", "-"]);
    assert_eq!(rows[1][4..], ["token/admin", "-"]);
    assert_eq!(rows[2][..3], ["edge-1", "agent", "edge-1"]);

    let revoked = as_admin(url, &["token", "revoke", "ci"]).await;
    assert_eq!(revoked.ok(), "token/ci revoked\n");
    let json = as_admin(url, &["token", "list", "-o", "json"]).await;
    let tokens: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(tokens[0]["name"], "ci");
    assert_eq!(tokens[0]["role"], "reader");
    assert!(tokens[0]["revokedAt"].is_string(), "{tokens}");
    assert!(tokens[1].get("revokedAt").is_none(), "{tokens}");
    assert!(
        !json.stdout.contains("sy_"),
        "secrets are never listed: {json:?}"
    );

    let missing = as_admin(url, &["token", "revoke", "nope"]).await;
    assert_eq!(missing.failed(2), "error: token nope not found");
    let twice = as_admin(url, &["token", "create", "ci", "--role", "reader"]).await;
    assert_eq!(twice.failed(2), "error: token ci already exists");
    assert!(twice.stdout.is_empty(), "no secret, no note: {twice:?}");

    let agent = as_admin(url, &["token", "create", "edge-2", "--role", "agent"]).await;
    assert_eq!(
        agent.failed(1),
        "error: --node: required with --role agent (the node the token speaks for)"
    );
    let named = as_admin(
        url,
        &["token", "create", "x", "--role", "admin", "-o", "name"],
    )
    .await;
    assert!(named.failed(1).contains("-o name is not supported"));
    assert_eq!(
        stand_in.tokens.lock().unwrap().len(),
        2,
        "refused on this side, nothing sent"
    );
    served.stop().await;
}

/// A caller without a token, or with one that is not an admin's, is told
/// which refusal it met and gets exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_exit_2_and_say_why() {
    let served = Served::start(tonic::transport::Server::builder().add_service(
        TokenServiceServer::with_interceptor(StandIn::default(), admins_only),
    ))
    .await;
    let url = served.url.as_str();
    let anonymous = run(command(url, &["token", "list"])).await;
    assert_eq!(
        anonymous.failed(2),
        "error: not authenticated: no bearer token (give a valid token with --token or YARD_TOKEN)"
    );
    let reader = run(command(
        url,
        &[
            "--token",
            "reader-secret",
            "token",
            "create",
            "x",
            "--role",
            "admin",
        ],
    ))
    .await;
    assert_eq!(
        reader.failed(2),
        "error: permission denied: CreateToken needs the admin role; token/ci has the reader role"
    );
    assert!(reader.stdout.is_empty());
    served.stop().await;
}

/// A control plane from before token management (OperatorService only) is
/// named as such, not met with an empty error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_without_token_service_says_so() {
    let db = TestDb::sqlite();
    let operator = Operator::new(
        Arc::new(db.store().await),
        Head::new(0),
        CancellationToken::new(),
    );
    let served = Served::start(
        tonic::transport::Server::builder().add_service(OperatorServiceServer::new(operator)),
    )
    .await;
    let url = served.url.clone();
    for args in [
        vec!["token", "list"],
        vec!["token", "create", "ci", "--role", "reader"],
        vec!["token", "revoke", "ci"],
    ] {
        let run = run(command(&url, &args)).await;
        assert_eq!(
            run.failed(2),
            format!(
                "error: the control plane at {url} does not serve TokenService; it predates token management"
            ),
            "{args:?}"
        );
    }
    served.stop().await;
}

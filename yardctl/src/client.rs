//! The connection to the control plane: its address, TLS, the bearer
//! token, call deadlines, and the calls several commands share.

use std::time::Duration;

use switchyard::label::Selector;
use switchyard::pb;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard::pb::token_service_client::TokenServiceClient;
use switchyard::resource::Kind;
use switchyard::tls::{self, ClientFiles};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cli::Global;
use crate::error::{Error, root_cause};

/// How long opening the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The deadline of one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Resources per `List` page.
const PAGE_SIZE: u32 = 500;

/// An operator API client that sends the token with every call.
pub type Client = OperatorServiceClient<InterceptedService<Channel, Auth>>;

/// A token API client on the same kind of connection, with the same token.
pub type TokenClient = TokenServiceClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Where and how to connect, checked before anything is sent.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `http://` or `https://` URL.
    pub url: String,
    /// The endpoint, with TLS set up from the files as they were read
    /// when the flags were checked.
    endpoint: Endpoint,
    auth: Auth,
}

impl Target {
    /// Checks the global flags: the address, the TLS files (read now), and
    /// the token. An address without a scheme is `https://` when a TLS
    /// flag is given, `http://` otherwise.
    pub fn new(global: &Global) -> Result<Self, Error> {
        let files = ClientFiles {
            ca_cert: global.ca_cert.clone(),
            cert: global.client_cert.clone(),
            key: global.client_key.clone(),
        };
        let server = global.server.trim();
        let url = if server.contains("://") {
            server.to_string()
        } else if files.is_empty() {
            format!("http://{server}")
        } else {
            format!("https://{server}")
        };
        let endpoint = files.endpoint(&url).map_err(|e| {
            let flag = match e.file() {
                Some(tls::File::CaCert | tls::File::ClientCa) => "--ca-cert",
                Some(tls::File::Cert) => "--client-cert",
                Some(tls::File::Key) => "--client-key",
                None => "--server",
            };
            Error::usage(format_args!("{flag}: {e}"))
        })?;
        let auth = match global.token.as_deref().map(str::trim) {
            None | Some("") => Auth(None),
            Some(token) => Auth(Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::usage("--token: must be printable ASCII without line breaks")
            })?)),
        };
        Ok(Self {
            url,
            endpoint,
            auth,
        })
    }

    /// Connects, failing fast (exit 3) when nothing answers or the TLS
    /// handshake fails.
    async fn channel(&self) -> Result<Channel, Error> {
        let endpoint = self
            .endpoint
            .clone()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| {
            let cause = root_cause(&e).unwrap_or_else(|| e.to_string());
            Error::unavailable(format_args!("cannot connect to {}: {cause}", self.url))
        })?;
        Ok(channel)
    }

    /// Connects an operator API client that sends the token with every call.
    pub async fn connect(&self) -> Result<Client, Error> {
        let channel = self.channel().await?;
        Ok(OperatorServiceClient::with_interceptor(
            channel,
            self.auth.clone(),
        ))
    }

    /// Connects a token API client, with the token as [`Target::connect`] sends it.
    pub async fn connect_tokens(&self) -> Result<TokenClient, Error> {
        let channel = self.channel().await?;
        Ok(TokenServiceClient::with_interceptor(
            channel,
            self.auth.clone(),
        ))
    }
}

/// A request with the unary call deadline.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Checks a label selector here, so that a typo is a usage error.
pub fn selector(flag: &str, text: Option<&str>) -> Result<String, Error> {
    let text = text.unwrap_or("").trim();
    Selector::parse(text).map_err(|e| Error::usage(format_args!("{flag} {text}: {e}")))?;
    Ok(text.to_string())
}

/// Every resource of `kind` matching `selector`, through all pages, and the
/// revision the first page was read at.
pub async fn list_all(
    client: &mut Client,
    kind: Kind,
    selector: &str,
) -> Result<(Vec<pb::Resource>, u64), Error> {
    let mut resources = Vec::new();
    let mut page_token = String::new();
    let mut revision = None;
    loop {
        let page = client
            .list(request(pb::ListRequest {
                kind: kind.to_pb() as i32,
                label_selector: selector.to_string(),
                page_size: PAGE_SIZE,
                page_token,
            }))
            .await
            .map_err(|s| Error::status(&s))?
            .into_inner();
        revision.get_or_insert(page.revision);
        resources.extend(page.resources);
        if page.next_page_token.is_empty() {
            return Ok((resources, revision.unwrap_or_default()));
        }
        page_token = page.next_page_token;
    }
}

/// The store's current revision, read cheaply (one service at most).
pub async fn current_revision(client: &mut Client) -> Result<u64, Error> {
    Ok(client
        .list(request(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            page_size: 1,
            ..Default::default()
        }))
        .await
        .map_err(|s| Error::status(&s))?
        .into_inner()
        .revision)
}

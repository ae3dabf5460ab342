//! `yardctl token`: create, list and revoke the bearer tokens that may call
//! the control plane (`switchyard.v1.TokenService`, admin principals only).
//!
//! A token's secret exists once, in the CreateToken answer: `create` prints
//! it alone on stdout, so that `> ci.token` captures exactly the secret, and
//! says on stderr that it is not shown again.

use std::time::SystemTime;

use serde_yaml_ng::Value;
use switchyard::pb;

use super::Console;
use crate::cli::{Output, Role, TokenCreateArgs, TokenRevokeArgs};
use crate::client::{Target, request};
use crate::error::Error;
use crate::manifest;
use crate::mapping::{self, enum_value_name};
use crate::table::{Table, age, dash};

/// Creates a token and prints its secret, once.
pub async fn create(
    target: &Target,
    output: Option<Output>,
    args: TokenCreateArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    if output == Some(Output::Name) {
        // The name alone would lose the secret for good.
        return Err(Error::usage(
            "token create prints the secret; -o name is not supported (use table, yaml or json)",
        ));
    }
    let message = create_request(&args)?;
    let mut client = target.connect_tokens().await?;
    let response = client
        .create_token(request(message))
        .await
        .map_err(|s| refused(&s, &target.url))?
        .into_inner();
    let token = response.token.unwrap_or_else(|| pb::Token {
        name: args.name.clone(),
        role: pb_role(args.role) as i32,
        node: args.node.clone().unwrap_or_default(),
        ..Default::default()
    });
    let text = match output.unwrap_or(Output::Table) {
        Output::Yaml => manifest::to_yaml(&[secret_document(&token, &response.secret)]),
        Output::Json => manifest::to_json(&secret_document(&token, &response.secret)) + "\n",
        Output::Table | Output::Name => format!("{}\n", response.secret),
    };
    // Unlike other output, a secret that was not written is lost: say so,
    // even for a closed pipe, and how to recover.
    let written = console
        .out
        .write_all(text.as_bytes())
        .and_then(|()| console.out.flush());
    if let Err(e) = written {
        return Err(Error::usage(format_args!(
            "token/{} was created, but its secret could not be written ({e}); \
             revoke it with `yardctl token revoke {}` and create another",
            token.name, token.name
        )));
    }
    writeln!(console.err, "{}", created_note(&token))?;
    Ok(())
}

/// Lists every token, revoked ones included.
pub async fn list(
    target: &Target,
    output: Option<Output>,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let mut client = target.connect_tokens().await?;
    let tokens = client
        .list_tokens(request(pb::ListTokensRequest {}))
        .await
        .map_err(|s| refused(&s, &target.url))?
        .into_inner()
        .tokens;
    match output.unwrap_or(Output::Table) {
        Output::Table => {
            if tokens.is_empty() {
                writeln!(console.err, "No tokens found.")?;
            } else {
                table(&tokens, SystemTime::now()).write(console.out)?;
            }
        }
        Output::Name => {
            for token in &tokens {
                writeln!(console.out, "{}", token.name)?;
            }
        }
        Output::Yaml => {
            let docs: Vec<Value> = tokens.iter().map(document).collect();
            console.out.write_all(manifest::to_yaml(&docs).as_bytes())?;
        }
        Output::Json => {
            let docs = Value::Sequence(tokens.iter().map(document).collect());
            writeln!(console.out, "{}", manifest::to_json(&docs))?;
        }
    }
    Ok(())
}

/// Revokes a token; revoking a revoked token again is not an error.
pub async fn revoke(
    target: &Target,
    output: Option<Output>,
    args: TokenRevokeArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let name = args.name.trim();
    if name.is_empty() {
        return Err(Error::usage("NAME: the token's name must not be empty"));
    }
    let mut client = target.connect_tokens().await?;
    let token = client
        .revoke_token(request(pb::RevokeTokenRequest {
            name: name.to_string(),
        }))
        .await
        .map_err(|s| refused(&s, &target.url))?
        .into_inner()
        .token
        .unwrap_or_else(|| pb::Token {
            name: name.to_string(),
            ..Default::default()
        });
    match output.unwrap_or(Output::Table) {
        Output::Table => writeln!(console.out, "token/{} revoked", token.name)?,
        Output::Name => writeln!(console.out, "{}", token.name)?,
        Output::Yaml => console
            .out
            .write_all(manifest::to_yaml(&[document(&token)]).as_bytes())?,
        Output::Json => writeln!(console.out, "{}", manifest::to_json(&document(&token)))?,
    }
    Ok(())
}

/// The CreateToken request `args` ask for, checked here so that a missing
/// or misplaced `--node` sends nothing.
fn create_request(args: &TokenCreateArgs) -> Result<pb::CreateTokenRequest, Error> {
    let name = args.name.trim();
    if name.is_empty() {
        return Err(Error::usage("NAME: the token's name must not be empty"));
    }
    let node = args.node.as_deref().map(str::trim).unwrap_or("");
    match (args.role, node.is_empty()) {
        (Role::Agent, true) => {
            return Err(Error::usage(
                "--node: required with --role agent (the node the token speaks for)",
            ));
        }
        (Role::Admin | Role::Reader, false) => {
            return Err(Error::usage(format_args!(
                "--node: only agent tokens are bound to a node; leave it out with --role {}",
                role_name(pb_role(args.role) as i32)
            )));
        }
        _ => {}
    }
    Ok(pb::CreateTokenRequest {
        name: name.to_string(),
        role: pb_role(args.role) as i32,
        node: node.to_string(),
    })
}

fn pb_role(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::Reader => pb::Role::Reader,
        Role::Agent => pb::Role::Agent,
    }
}

/// A role in words (`reader`).
fn role_name(role: i32) -> String {
    enum_value_name("switchyard.v1.Role", role)
}

/// What stderr says after a token is created.
fn created_note(token: &pb::Token) -> String {
    let node = if token.node.is_empty() {
        String::new()
    } else {
        format!(" for node {}", token.node)
    };
    format!(
        "token/{} created with the {} role{node}; keep its secret now: it is not shown again",
        token.name,
        role_name(token.role)
    )
}

/// The tokens as a table: NAME ROLE NODE CREATED BY REVOKED, with ages
/// (as of `now`) for the two times.
fn table(tokens: &[pb::Token], now: SystemTime) -> Table {
    let mut t = Table::new(&["NAME", "ROLE", "NODE", "CREATED", "BY", "REVOKED"]);
    let when =
        |at: &Option<prost_types::Timestamp>| at.as_ref().map_or("-".into(), |at| age(at, now));
    for token in tokens {
        t.row(vec![
            token.name.clone(),
            role_name(token.role),
            dash(&token.node),
            when(&token.created_at),
            dash(&token.created_by),
            when(&token.revoked_at),
        ]);
    }
    t
}

/// A token as a document: its fields in the protobuf JSON mapping
/// (`createdAt`, `revokedAt` in RFC 3339), defaults left out.
fn document(token: &pb::Token) -> Value {
    mapping::to_value(token, "switchyard.v1.Token")
}

/// A created token with its secret, for `-o yaml|json`.
fn secret_document(token: &pb::Token, secret: &str) -> Value {
    let mut doc = document(token);
    if let Value::Mapping(fields) = &mut doc {
        fields.insert("secret".into(), Value::String(secret.to_string()));
    }
    doc
}

/// A failed token call. A control plane without TokenService answers
/// UNIMPLEMENTED with no message; say what that means.
fn refused(status: &tonic::Status, url: &str) -> Error {
    if status.code() == tonic::Code::Unimplemented && status.message().trim().is_empty() {
        return Error::rejected(format_args!(
            "the control plane at {url} does not serve TokenService; it predates token management"
        ));
    }
    Error::status(status)
}

#[cfg(test)]
mod tests;

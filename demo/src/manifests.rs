//! The demo's manifests: YAML files in `demo/manifests/`, compiled into the
//! binary, with `${NAME}` variables for what is only known at start (the
//! backends' ports, the listeners' ports, the node's id). They are filled
//! in, then read by `yardctl`'s manifest parser, so they are written exactly
//! as an operator would write them for `yardctl apply`.

use std::collections::BTreeMap;

use switchyard::pb;

/// The manifests, by the path they have in the repository, in the order
/// they are applied (all in one batch).
pub const FILES: [(&str, &str); 3] = [
    (
        "demo/manifests/web.yaml",
        include_str!("../manifests/web.yaml"),
    ),
    (
        "demo/manifests/round-robin.yaml",
        include_str!("../manifests/round-robin.yaml"),
    ),
    (
        "demo/manifests/canary.yaml",
        include_str!("../manifests/canary.yaml"),
    ),
];

/// Why the manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `${NAME}` that no value was given for.
    #[error("{file}: unknown variable ${{{name}}}")]
    Unknown {
        /// The manifest file.
        file: String,
        /// The variable.
        name: String,
    },
    /// A `${` without its closing brace.
    #[error("{file}: unclosed `${{` at byte {at}")]
    Unclosed {
        /// The manifest file.
        file: String,
        /// Where the variable starts.
        at: usize,
    },
    /// The filled-in manifest does not parse.
    #[error(transparent)]
    Parse(#[from] yardctl::Error),
}

/// Variable values by name (`WEB_PORT` → `8080`).
pub type Vars = BTreeMap<String, String>;

/// Every resource the demo applies, its variables filled in from `vars`.
pub fn load(vars: &Vars) -> Result<Vec<pb::Resource>, Error> {
    let mut resources = Vec::new();
    for (file, text) in FILES {
        let text = substitute(file, text, vars)?;
        let manifests = yardctl::manifest::parse(&text, file)?;
        resources.extend(manifests.into_iter().map(|m| m.resource));
    }
    Ok(resources)
}

/// `text` with each `${NAME}` replaced by its value in `vars`. Any other
/// `$` is left as it is; an unknown or unclosed variable is an error rather
/// than text passed on to the parser.
pub fn substitute(file: &str, text: &str, vars: &Vars) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(Error::Unclosed {
                file: file.to_owned(),
                at: text.len() - rest.len() + start,
            });
        };
        let name = &after[..end];
        let value = vars.get(name).ok_or_else(|| Error::Unknown {
            file: file.to_owned(),
            name: name.to_owned(),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variable holding the port of the backend `name` (`web-v1-a` →
/// `WEB_V1_A_PORT`).
pub fn port_var(name: &str) -> String {
    format!(
        "{}_PORT",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

#[cfg(test)]
mod tests;

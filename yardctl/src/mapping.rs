//! Protobuf messages to and from plain documents (the values behind YAML and
//! JSON), following the proto3 JSON mapping as the API's own descriptors
//! describe it: camelCase field names (snake_case accepted), durations as
//! `"1.5s"` (`100ms` and `2m` accepted too), timestamps in RFC 3339. Enum
//! values are written short and lower case (`least_request` for
//! `LB_POLICY_LEAST_REQUEST`); both spellings, and `least-request`, are
//! accepted.
//!
//! Why descriptors rather than serde impls on the generated types: those
//! types hold `prost_types::Duration` and `Timestamp`, which have no serde
//! impls, and swapping them for types that do would change what every crate
//! in the workspace builds with. A message makes the round trip through its
//! encoding instead, which costs nothing a CLI would notice.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, EnumDescriptor, FieldDescriptor,
    Kind as FieldKind, MessageDescriptor, SerializeOptions,
};
use serde::{Serialize, Serializer};
use serde_yaml_ng::{Mapping, Value};

/// The API's message types, from the descriptor set compiled into the
/// `switchyard` crate.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(switchyard::pb::FILE_DESCRIPTOR_SET)
        .expect("the API's descriptor set decodes")
});

/// A message type of the API by its protobuf name (`switchyard.v1.Service`).
///
/// # Panics
/// When the API has no such message: names are fixed in this crate.
pub fn descriptor(name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not a message of the API"))
}

/// A problem with one field of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field in the document (`rules[0].action.timeout`); empty
    /// for the document as a whole.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// `message`, of protobuf type `type_name`, as a document: default values
/// left out, maps in key order, enum values short.
pub fn to_value(message: &impl prost::Message, type_name: &str) -> Value {
    let desc = descriptor(type_name);
    let dynamic = DynamicMessage::decode(desc.clone(), message.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    let mut value =
        serde_yaml_ng::to_value(WithOptions(&dynamic)).expect("a message always serializes");
    tidy(&mut value, &desc);
    value
}

/// Reads `value` as a message of protobuf type `type_name`.
pub fn from_value<M: prost::Message + Default>(
    mut value: Value,
    type_name: &str,
) -> Result<M, FieldError> {
    let desc = descriptor(type_name);
    normalize(&mut value, &desc, "")?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let dynamic = DynamicMessage::deserialize_with_options(desc, de, &DeserializeOptions::new())
        .map_err(|e| {
            let path = track.path().to_string();
            FieldError {
                path: if path == "." { String::new() } else { path },
                reason: e.to_string(),
            }
        })?;
    Ok(M::decode(dynamic.encode_to_vec().as_slice()).expect("a message decodes as its own type"))
}

/// The short, lower-case form of an enum value: `least_request` for
/// `LB_POLICY_LEAST_REQUEST` of `LbPolicy`.
pub fn short_enum_name(enum_type: &EnumDescriptor, full: &str) -> String {
    full.strip_prefix(&enum_prefix(enum_type))
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// The short name of value `number` of enum `type_name`
/// (`switchyard.v1.Health`), or the number itself when unknown.
pub fn enum_value_name(type_name: &str, number: i32) -> String {
    let e = POOL
        .get_enum_by_name(type_name)
        .unwrap_or_else(|| panic!("{type_name} is not an enum of the API"));
    match e.get_value(number) {
        Some(v) => short_enum_name(&e, v.name()),
        None => number.to_string(),
    }
}

// Serializes with the options this crate uses: 64-bit integers as numbers
// (revisions read better that way, and every reader here takes either).
struct WithOptions<'a>(&'a DynamicMessage);

impl Serialize for WithOptions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let options = SerializeOptions::new().stringify_64_bit_integers(false);
        self.0.serialize_with_options(serializer, &options)
    }
}

/// Shortens enum values, puts fields in declaration order and sorts map
/// entries (decoded maps have no order).
fn tidy(value: &mut Value, desc: &MessageDescriptor) {
    let Value::Mapping(map) = value else { return };
    let mut fields: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
    fields.sort_by_key(|(k, _)| {
        k.as_str()
            .and_then(|k| field_of(desc, k))
            .map_or(u32::MAX, |f| f.number())
    });
    map.extend(fields);
    for (key, v) in map.iter_mut() {
        let Some(field) = key.as_str().and_then(|k| field_of(desc, k)) else {
            continue;
        };
        if field.is_map() {
            let FieldKind::Message(entry) = field.kind() else {
                continue;
            };
            let value_field = entry.map_entry_value_field();
            if let Value::Mapping(entries) = v {
                let mut sorted: Vec<_> = std::mem::take(entries).into_iter().collect();
                sorted.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
                for (k, mut item) in sorted {
                    tidy_one(&mut item, &value_field);
                    entries.insert(k, item);
                }
            }
        } else if let Value::Sequence(items) = v {
            for item in items {
                tidy_one(item, &field);
            }
        } else {
            tidy_one(v, &field);
        }
    }
}

fn tidy_one(value: &mut Value, field: &FieldDescriptor) {
    match field.kind() {
        FieldKind::Enum(e) => {
            if let Value::String(s) = value {
                *s = short_enum_name(&e, s);
            }
        }
        FieldKind::Message(m) => tidy(value, &m),
        _ => {}
    }
}

/// Checks field names (with a suggestion for a misspelt one) and turns
/// friendly enum spellings into the canonical ones, before the generic
/// reader sees the document.
fn normalize(value: &mut Value, desc: &MessageDescriptor, path: &str) -> Result<(), FieldError> {
    if desc.full_name() == "google.protobuf.Duration" {
        return normalize_duration(value, path);
    }
    if is_well_known(desc) {
        return Ok(());
    }
    let Value::Mapping(map) = value else {
        return Ok(());
    };
    for (key, v) in map.iter_mut() {
        let Some(name) = key.as_str() else {
            return Err(FieldError {
                path: path.to_string(),
                reason: format!("field names are strings, not {}", describe(key)),
            });
        };
        let here = child(path, name);
        let Some(field) = field_of(desc, name) else {
            return Err(FieldError {
                path: here,
                reason: unknown_field(desc, name),
            });
        };
        if field.is_map() {
            let FieldKind::Message(entry) = field.kind() else {
                continue;
            };
            let value_field = entry.map_entry_value_field();
            if let Value::Mapping(entries) = v {
                for (k, item) in entries.iter_mut() {
                    let at = child(&here, k.as_str().unwrap_or("?"));
                    normalize_one(item, &value_field, &at)?;
                }
            }
        } else if let (true, Value::Sequence(items)) = (field.is_list(), &mut *v) {
            for (i, item) in items.iter_mut().enumerate() {
                normalize_one(item, &field, &format!("{here}[{i}]"))?;
            }
        } else {
            normalize_one(v, &field, &here)?;
        }
    }
    Ok(())
}

fn normalize_one(value: &mut Value, field: &FieldDescriptor, path: &str) -> Result<(), FieldError> {
    match field.kind() {
        FieldKind::Enum(e) => {
            if let Value::String(given) = value {
                match canonical_enum_name(&e, given) {
                    Some(full) => *given = full,
                    None => {
                        return Err(FieldError {
                            path: path.to_string(),
                            reason: format!(
                                "unknown value `{given}`; expected one of {}",
                                enum_choices(&e)
                            ),
                        });
                    }
                }
            }
            Ok(())
        }
        FieldKind::Message(m) => normalize(value, &m, path),
        _ => Ok(()),
    }
}

/// Durations may also be written `100ms`, `2m` or `1h 30m`; the JSON
/// mapping itself knows seconds only (`0.1s`).
fn normalize_duration(value: &mut Value, path: &str) -> Result<(), FieldError> {
    let Value::String(text) = value else {
        return Ok(());
    };
    let canonical = text
        .strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok());
    if canonical {
        return Ok(());
    }
    match humantime::parse_duration(text) {
        Ok(d) => {
            *text = if d.subsec_nanos() == 0 {
                format!("{}s", d.as_secs())
            } else {
                format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
            };
            Ok(())
        }
        Err(_) => Err(FieldError {
            path: path.to_string(),
            reason: format!("`{text}` is not a duration; write it like 1.5s, 100ms or 2m"),
        }),
    }
}

fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

/// A field by its JSON name or its protobuf name.
fn field_of(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(name)
        .or_else(|| desc.get_field_by_name(name))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

fn unknown_field(desc: &MessageDescriptor, name: &str) -> String {
    let known: Vec<String> = desc.fields().map(|f| f.json_name().to_string()).collect();
    let closest = known
        .iter()
        .map(|k| {
            (
                edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d);
    match closest {
        Some((_, k)) => format!("unknown field `{name}`; did you mean `{k}`?"),
        None => format!(
            "unknown field `{name}`; expected one of {}",
            known.join(", ")
        ),
    }
}

/// `LbPolicy` → `LB_POLICY_`: the prefix protobuf style puts on every value.
fn enum_prefix(e: &EnumDescriptor) -> String {
    let mut prefix = String::new();
    for (i, c) in e.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    prefix
}

fn canonical_enum_name(e: &EnumDescriptor, given: &str) -> Option<String> {
    let upper = given.trim().to_ascii_uppercase().replace('-', "_");
    [upper.clone(), format!("{}{upper}", enum_prefix(e))]
        .into_iter()
        .find(|candidate| e.get_value_by_name(candidate).is_some())
}

fn enum_choices(e: &EnumDescriptor) -> String {
    e.values()
        .filter(|v| !v.name().ends_with("_UNSPECIFIED"))
        .map(|v| short_enum_name(e, v.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A fresh mapping with `entries`, for building documents by hand.
pub fn mapping<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Mapping {
    entries
        .into_iter()
        .map(|(k, v)| (Value::String(k.to_string()), v))
        .collect()
}

#[cfg(test)]
mod tests;

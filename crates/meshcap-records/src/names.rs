//! The names that key an attachment record and become its path: the network (a directory),
//! the container id and the interface name (`<container id>@<ifname>.json`). The plugin
//! validates them from `CNI_*` and its config, the agent from libcni's cache, both here, so
//! no name read from anywhere can leave the state directory.

/// Linux `IFNAMSIZ` is 16 including the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// A name that may not key a record: which parameter, its value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is invalid: {reason}")]
pub struct InvalidName {
    /// The CNI parameter the value came in (`CNI_CONTAINERID`, `CNI_IFNAME`).
    pub name: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// CNI spec: "Must start with an alphanumeric character, optionally followed by any
/// combination of one or more alphanumeric characters, underscore, dot or hyphen." The
/// attachment record's file name relies on this (no `/`, no `@`).
pub fn validate_container_id(id: &str) -> Result<(), InvalidName> {
    let invalid = |reason| InvalidName {
        name: "CNI_CONTAINERID",
        value: id.to_string(),
        reason,
    };
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err(invalid("must start with an ASCII letter or digit")),
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            "only ASCII letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

/// CNI spec: Linux interface-name rules: not empty, not `.` or `..`, shorter than 16 bytes,
/// no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), InvalidName> {
    let invalid = |reason| InvalidName {
        name: "CNI_IFNAME",
        value: name.to_string(),
        reason,
    };
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are not interface names"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid("longer than 15 bytes (IFNAMSIZ)"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "contains '/', ':', whitespace or a control character",
        ));
    }
    Ok(())
}

/// libcni's network-name rule (`utils.ValidateNetworkName`): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
/// The name is a directory of the state dir, so this also keeps it a single path component.
pub fn is_valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

//! Configuration errors (SPEC §4): every error names where it is — a TOML path such as
//! `loki.primary.batch_size`, a file, or a line and column for syntax errors — and they are
//! collected, so `kube-log-relay check` prints all of them at once (SPEC §3).

use std::fmt;

/// One problem in the configuration, at `path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where: a TOML path (`relabel[2].regex`), a file name, or `line 3, column 7`.
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one configuration, in the order found. Never empty when returned as
/// an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single file-level error: the file could not be read.
    pub fn unreadable(file: &std::path::Path, error: &std::io::Error) -> ConfigErrors {
        ConfigErrors(vec![ConfigError::new(
            file.display().to_string(),
            format!("cannot read the configuration file: {error}"),
        )])
    }

    /// The errors, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `prefix.key`, quoting `key` when it is not a bare TOML key (`http_headers."X-A.b"`).
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// `prefix[index]`.
pub(crate) fn join_index(prefix: &str, index: usize) -> String {
    format!("{prefix}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join_key("", "loki"), "loki");
        assert_eq!(join_key("loki", "primary"), "loki.primary");
        assert_eq!(
            join_key("loki.a.headers", "X-Scope-OrgID"),
            "loki.a.headers.X-Scope-OrgID"
        );
        assert_eq!(join_key("h", "a.b"), "h.\"a.b\"");
        assert_eq!(join_index("relabel", 2), "relabel[2]");
    }

    #[test]
    fn display_is_one_error_per_line_with_its_path() {
        let errors = ConfigErrors(vec![
            ConfigError::new("loki.primary.url", "missing (required)"),
            ConfigError::new("tail.chunk_lines", "must be > 0"),
        ]);
        assert_eq!(
            errors.to_string(),
            "loki.primary.url: missing (required)\ntail.chunk_lines: must be > 0"
        );
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let errors = ConfigErrors::unreadable(std::path::Path::new("/etc/relay.toml"), &io);
        assert_eq!(
            errors.to_string(),
            "/etc/relay.toml: cannot read the configuration file: No such file or directory"
        );
    }
}

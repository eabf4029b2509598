//! `${VAR}` and `${VAR:-default}` in every string value of the configuration (SPEC §4).
//!
//! Expansion runs on the parsed TOML tree *before* typed deserialization, so any string can
//! come from the environment (`batch_wait = "${WAIT:-1s}"`). Only string values expand — keys,
//! numbers and booleans do not (`qps = "${QPS}"` is a string, hence a type error).
//!
//! Rules: `$$` is a literal `$`; `${NAME}` needs `NAME` set (an unset variable without default
//! is an error naming it and the TOML path); `${NAME:-default}` uses `default` when `NAME` is
//! unset *or empty*, as the shell does. A `$` followed by anything else stays as written, and so
//! does `${1}` (a variable name cannot start with a digit): relabel replacements such as
//! `"$1"` and `"${1}-${2}"` need no escaping. A named capture group must be escaped:
//! `"$${name}"`.

use super::error::{ConfigError, join_index, join_key};

/// Expands every string value in `table`, in place, and returns one error per string that
/// could not be expanded (that value is left as written).
pub fn expand_table(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (key, value) in table.iter_mut() {
        expand_value(&join_key("", key), value, env, &mut errors);
    }
    errors
}

fn expand_value(
    path: &str,
    value: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(text) => match expand_str(text, env) {
            Ok(expanded) => *text = expanded,
            Err(message) => errors.push(ConfigError::new(path, message)),
        },
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_value(&join_index(path, index), item, env, errors);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(&join_key(path, key), item, env, errors);
            }
        }
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => {}
    }
}

/// Expands one string; the error is the message of a [`ConfigError`]. Messages never repeat the
/// string itself: it may be a secret.
pub fn expand_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    // Fast path: most values have no `$` at all.
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let Some(close) = body_and_tail.find('}') else {
                return Err(
                    r#"unterminated "${" (close it with "}", or write "$$" for a literal "$")"#
                        .to_owned(),
                );
            };
            let body = &body_and_tail[..close];
            rest = &body_and_tail[close + 1..];
            if body.starts_with(|c: char| c.is_ascii_digit()) {
                // `${1}`: a capture-group reference of a relabel replacement, not a variable.
                out.push_str("${");
                out.push_str(body);
                out.push('}');
                continue;
            }
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    r#"{name:?} is not a valid variable name (letters, digits and _, not starting with a digit; write "$$" for a literal "$")"#
                ));
            }
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (set it, or give a default: \"${{{name}:-default}}\")"
                    ));
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("loki.example".into()),
            "EMPTY" => Some(String::new()),
            "WAIT" => Some("2s".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_table() {
        let cases = [
            ("plain", "plain"),
            ("http://${HOST}:3100", "http://loki.example:3100"),
            ("${WAIT:-1s}", "2s"),
            ("${UNSET:-1s}", "1s"),
            ("${UNSET:-}", ""),
            ("${EMPTY:-fallback}", "fallback"),
            ("${EMPTY}", ""),
            ("a$$b", "a$b"),
            ("$${HOST}", "${HOST}"),
            ("$$$$", "$$"),
            ("$1", "$1"),
            ("${1}-${2}", "${1}-${2}"),
            ("(.*)$", "(.*)$"),
            ("$", "$"),
            ("${HOST}${HOST}", "loki.exampleloki.example"),
            ("${UNSET:-a:-b}", "a:-b"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_str(input, &env).as_deref(), Ok(want), "{input}");
        }
    }

    proptest::proptest! {
        /// Any text survives expansion once its dollars are escaped as `$$`.
        #[test]
        fn escaped_text_expands_to_itself(text in ".*") {
            let escaped = text.replace('$', "$$");
            proptest::prop_assert_eq!(expand_str(&escaped, &env), Ok(text));
        }
    }

    #[test]
    fn unset_variable_is_named() {
        assert_eq!(
            expand_str("${LOKI_URL}", &env).unwrap_err(),
            r#"environment variable LOKI_URL is not set (set it, or give a default: "${LOKI_URL:-default}")"#
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(
            expand_str("${HOST", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand_str("${}", &env)
                .unwrap_err()
                .contains("not a valid variable name")
        );
        assert!(expand_str("${A-B}", &env).unwrap_err().contains("\"A-B\""));
    }

    #[test]
    fn tree_expansion_reports_the_toml_path() {
        let mut table: toml::Table = r#"
            [loki.primary]
            url = "http://${HOST}/push"
            batch_wait = "${NOPE}"
            [[relabel]]
            replacement = "${ALSO_NOPE}"
            [kubernetes.http_headers]
            "X-A.b" = ["${NOPE3}"]
        "#
        .parse()
        .unwrap();
        let errors = expand_table(&mut table, &env);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kubernetes.http_headers.\"X-A.b\"[0]",
                "loki.primary.batch_wait",
                "relabel[0].replacement"
            ]
        );
        assert_eq!(
            table["loki"]["primary"]["url"].as_str(),
            Some("http://loki.example/push")
        );
    }
}

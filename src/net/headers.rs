//! Configured headers (`http_headers`, `headers`, `proxy_connect_header`) as HTTP headers: one
//! parser for every client, values marked sensitive (they often carry API keys), errors that
//! name the header and say why.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Secret;

/// A configured header that is not a valid HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name:?}: {reason}")]
pub struct HeaderError {
    pub name: String,
    pub reason: String,
}

/// `headers` (name → values, in order) as a header map; every value sensitive.
pub fn secret_headers<'a, V>(
    headers: impl IntoIterator<Item = (&'a String, V)>,
) -> Result<HeaderMap, HeaderError>
where
    V: IntoIterator<Item = &'a Secret>,
{
    let mut map = HeaderMap::new();
    for (name, values) in headers {
        let error = |reason: String| HeaderError {
            name: name.clone(),
            reason,
        };
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| error(e.to_string()))?;
        for value in values {
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                error("the value holds a character not allowed in a header (a newline?)".into())
            })?;
            // Keep secrets out of debug output and HPACK tables.
            value.set_sensitive(true);
            map.append(header.clone(), value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn values_are_sensitive_and_repeat_in_order_and_bad_ones_are_named() {
        let mut headers: BTreeMap<String, Vec<Secret>> = BTreeMap::new();
        headers.insert("X-Key".into(), vec![Secret("a".into()), Secret("b".into())]);
        let map = secret_headers(headers.iter()).expect("valid");
        let values: Vec<_> = map.get_all("x-key").iter().collect();
        assert_eq!(values, ["a", "b"]);
        assert!(values.iter().all(|v| v.is_sensitive()));

        let mut bad: BTreeMap<String, Vec<Secret>> = BTreeMap::new();
        bad.insert("X-Key".into(), vec![Secret("a\nb".into())]);
        assert_eq!(
            secret_headers(bad.iter()).expect_err("newline").name,
            "X-Key"
        );
        let mut bad: BTreeMap<String, Vec<Secret>> = BTreeMap::new();
        bad.insert("bad name".into(), vec![]);
        assert_eq!(
            secret_headers(bad.iter()).expect_err("space").name,
            "bad name"
        );
    }
}

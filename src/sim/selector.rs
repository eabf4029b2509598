//! Label and field selectors of the pods list and watch (SPEC §8.5), parsed like the API server.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k`
//! (does not exist), comma-separated, all of which must hold. Field selectors: `f=v`, `f==v`,
//! `f!=v` on the fields the API server indexes for pods (`metadata.name`, `metadata.namespace`,
//! `spec.nodeName`, `status.phase`, …).

use std::collections::BTreeMap;

/// A selector string the API server would refuse; the message is the API server's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_values(rest: &str, req: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!(
                "unable to parse requirement: {req}: expected a set like (a,b)"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top_level(s) {
            let req = part.trim();
            let bad = || {
                SelectorError(format!(
                    "unable to parse requirement: found '{req}', expected: key, !key, key=value, key!=value, key in (a,b), key notin (a,b)"
                ))
            };
            let parsed = if let Some(key) = req.strip_prefix('!') {
                LabelRequirement::DoesNotExist(key.trim().to_string())
            } else if let Some((k, v)) = req.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = req.split_once(" notin ") {
                LabelRequirement::NotIn(k.trim().to_string(), parse_values(rest, req)?)
            } else if let Some((k, rest)) = req.split_once(" in ") {
                LabelRequirement::In(k.trim().to_string(), parse_values(rest, req)?)
            } else {
                LabelRequirement::Exists(req.to_string())
            };
            let key = match &parsed {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            reqs.push(parsed);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            // Like the API server: `k!=v` also matches objects without the label.
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// The pod fields a field selector may use.
pub const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
];

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a `fieldSelector` query value for pods.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let req = part.trim();
            let (field, equal, value) = if let Some((f, v)) = req.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{req}'; can't understand '{req}'"
                )));
            };
            let field = field.trim();
            if !POD_FIELDS.contains(&field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the object whose field values `get` returns satisfies every requirement.
    pub fn matches(&self, get: impl Fn(&str) -> String) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (get(field) == *value) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let job = labels(&[("app", "backup")]);
        let none = labels(&[]);
        #[rustfmt::skip]
        let table: &[(&str, [bool; 3])] = &[
            ("", [true, true, true]),
            ("app=web", [true, false, false]),
            ("app==web", [true, false, false]),
            ("app!=web", [false, true, true]),
            ("app in (web, db)", [true, false, false]),
            ("app notin (web,db)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("app=web,tier=front", [true, false, false]),
            ("app in (web,backup),!tier", [false, true, false]),
        ];
        for (sel, want) in table {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(
                [s.matches(&web), s.matches(&job), s.matches(&none)],
                *want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for sel in ["app in web", "a b", "=x", "app in (a"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selectors_match_and_refuse_unknown_fields() {
        let get = |f: &str| match f {
            "metadata.name" => "web-1".to_string(),
            "status.phase" => "Running".to_string(),
            _ => String::new(),
        };
        for (sel, want) in [
            ("", true),
            ("metadata.name=web-1", true),
            ("metadata.name==web-2", false),
            ("metadata.name!=web-2,status.phase=Running", true),
            ("status.phase!=Running", false),
            ("spec.nodeName=", true),
        ] {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(get),
                want,
                "{sel}"
            );
        }
        let err = FieldSelector::parse("spec.foo=bar").unwrap_err();
        assert_eq!(err.0, "field label not supported: spec.foo");
    }
}

//! The receivers (SPEC §4.5): every `[loki.<name>]` — batching, buffering, retries, Loki's
//! limits and the shared client options of [`super::client`] — and `[stdout]`.

use std::collections::BTreeMap;

use super::client::{AuthKeys, ProxyKeys, auth, header, proxy, tls};
use super::{
    Checker, DAY, HOUR, LABEL_NAME_RULE, LOG_FORMATS, MAX_BUFFER, MAX_LINE_OR_BATCH, is_label_name,
};
use crate::config::error::join_key;
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::units::format_size;

/// One `[loki.<name>]` receiver (SPEC §4.5).
pub(super) fn receiver(c: &mut Checker, name: &str, raw: &RawLoki) -> LokiConfig {
    let path = join_key("loki", name);
    let at = |key: &str| join_key(&path, key);
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        c.error(
            &path,
            format!("{name:?} is not a valid receiver name (letters, digits, '_' and '-')"),
        );
    }
    let url = match &raw.url {
        None => {
            c.error(at("url"), "missing (required)");
            String::new()
        }
        Some(url) => c.url(&at("url"), Some(url)).unwrap_or_default(),
    };
    let d = LokiConfig::with_url(url);
    let tenant_id = c.non_empty(&at("tenant_id"), raw.tenant_id.as_ref());
    if let Some(tenant) = &tenant_id
        && http::HeaderValue::from_str(tenant).is_err()
    {
        c.error(
            at("tenant_id"),
            "is not a valid HTTP header value (no control characters or newlines)",
        );
    }
    let mut headers = BTreeMap::new();
    for (header_name, value) in raw.headers.iter().flatten() {
        if header(c, &at("headers"), header_name, std::slice::from_ref(value)) {
            headers.insert(header_name.clone(), Secret(value.clone()));
        }
        if tenant_id.is_some() && header_name.eq_ignore_ascii_case("x-scope-orgid") {
            c.error(
                join_key(&at("headers"), header_name),
                "conflicts with tenant_id (set the tenant in one place)",
            );
        }
    }
    let max_label_names = c.positive(
        &at("max_label_names"),
        raw.max_label_names,
        d.max_label_names,
    );
    let max_label_value_length = c.positive(
        &at("max_label_value_length"),
        raw.max_label_value_length,
        d.max_label_value_length,
    );
    let mut external_labels = Vec::new();
    let labels = raw.external_labels.as_ref();
    for (label, value) in labels.into_iter().flatten() {
        let label_path = join_key(&at("external_labels"), label);
        if !is_label_name(label) {
            c.error(
                label_path,
                format!("{label:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        } else if label.starts_with("__") {
            c.error(
                label_path,
                "labels starting with \"__\" are dropped before sending: choose another name",
            );
        } else if value.is_empty() {
            c.error(label_path, "must not be empty (Loki ignores empty labels)");
        } else if value.len() > max_label_value_length {
            c.error(
                label_path,
                format!("is longer than max_label_value_length ({max_label_value_length})"),
            );
        } else {
            external_labels.push((label.clone(), value.clone()));
        }
    }
    if labels.is_some_and(|l| l.len() > max_label_names) {
        c.error(
            at("external_labels"),
            format!("has more labels than max_label_names ({max_label_names})"),
        );
    }
    let batch_size = c.size(
        &at("batch_size"),
        raw.batch_size.as_ref(),
        d.batch_size,
        MAX_LINE_OR_BATCH,
    );
    let batch_size = c.positive(&at("batch_size"), Some(batch_size), d.batch_size);
    let buffer_size = c.size(
        &at("buffer_size"),
        raw.buffer_size.as_ref(),
        d.buffer_size,
        MAX_BUFFER,
    );
    if buffer_size < batch_size {
        c.error(
            at("buffer_size"),
            format!(
                "must be at least batch_size ({})",
                format_size(batch_size as u64)
            ),
        );
    }
    let min_backoff = c.positive_duration(
        &at("min_backoff"),
        raw.min_backoff.as_deref(),
        d.min_backoff,
        DAY,
    );
    let max_backoff = c.positive_duration(
        &at("max_backoff"),
        raw.max_backoff.as_deref(),
        d.max_backoff,
        DAY,
    );
    if min_backoff > max_backoff {
        c.error(at("min_backoff"), "must not exceed max_backoff");
    }
    LokiConfig {
        tenant_id,
        headers,
        external_labels,
        batch_size,
        batch_wait: c.positive_duration(
            &at("batch_wait"),
            raw.batch_wait.as_deref(),
            d.batch_wait,
            HOUR,
        ),
        buffer_size,
        on_full: c.word(
            &at("on_full"),
            raw.on_full.as_deref(),
            &[("block", OnFull::Block), ("drop", OnFull::Drop)],
            d.on_full,
        ),
        min_backoff,
        max_backoff,
        max_retries: raw.max_retries.unwrap_or(d.max_retries),
        retry_on_http_429: raw.retry_on_http_429.unwrap_or(d.retry_on_http_429),
        remote_timeout: c.positive_duration(
            &at("remote_timeout"),
            raw.remote_timeout.as_deref(),
            d.remote_timeout,
            HOUR,
        ),
        auth: auth(
            c,
            &path,
            &AuthKeys {
                bearer_token: raw.bearer_token.as_ref(),
                bearer_token_file: raw.bearer_token_file.as_ref(),
                authorization: raw.authorization.as_ref(),
                basic_auth: raw.basic_auth.as_ref(),
                oauth2: raw.oauth2.as_ref(),
            },
        ),
        tls: tls(c, &at("tls_config"), raw.tls_config.as_ref()),
        proxy: proxy(
            c,
            &path,
            &ProxyKeys {
                proxy_url: raw.proxy_url.as_ref(),
                no_proxy: raw.no_proxy.as_ref(),
                proxy_from_environment: raw.proxy_from_environment,
                proxy_connect_header: raw.proxy_connect_header.as_ref(),
            },
        ),
        enable_http2: raw.enable_http2.unwrap_or(d.enable_http2),
        max_label_names,
        max_label_value_length,
        max_line_size: c.size(
            &at("max_line_size"),
            raw.max_line_size.as_ref(),
            d.max_line_size,
            MAX_LINE_OR_BATCH,
        ),
        max_line_size_truncate: raw
            .max_line_size_truncate
            .unwrap_or(d.max_line_size_truncate),
        url: d.url,
    }
}

/// The `[stdout]` receiver (SPEC §4.5).
pub(super) fn stdout(c: &mut Checker, raw: &RawStdout) -> StdoutConfig {
    StdoutConfig {
        format: c.word(
            "stdout.format",
            raw.format.as_deref(),
            LOG_FORMATS,
            LogFormat::Logfmt,
        ),
    }
}

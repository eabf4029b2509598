//! `GET /`: the status page (SPEC §8.3) — server-rendered HTML with inline CSS, no JavaScript.
//!
//! A person should see at a glance whether the relay is healthy: a summary of targets by state
//! (each a link that filters the table), the receivers with their queues and last error, the
//! cluster state, and the targets table, filtered by namespace and state through query
//! parameters of a plain `<form method=get>`. [`render`] is a pure function of [`PageData`];
//! every value from the cluster or the configuration goes through [`escape`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use jiff::Timestamp;

use super::{ClusterView, ReceiverView, TargetFilter, namespace_of};
use crate::config::ClusteringConfig;
use crate::kube::pool::ConnectionStats;
use crate::registry::TargetView;

/// Every state a target can be in, in the order the page lists them.
pub const STATES: [&str; 6] = [
    "running", "waiting", "backoff", "draining", "finished", "rejected",
];

/// What the page shows.
pub struct PageData<'a> {
    pub version: &'a str,
    /// The first discovery sync was applied.
    pub synced: bool,
    /// Actors that stopped (the process is unhealthy when any did).
    pub stopped: Vec<&'static str>,
    /// Every target, unfiltered: the summary counts them all.
    pub targets: &'a [TargetView],
    pub filter: &'a TargetFilter,
    pub receivers: &'a [ReceiverView],
    pub clustering: &'a ClusteringConfig,
    /// What this replica knows of its cluster, when clustering is on.
    pub cluster: Option<&'a ClusterView>,
    /// The Kubernetes client's pooled connections (SPEC §4.1).
    pub connections: &'a [ConnectionStats],
    /// The time "ago" values are measured from.
    pub now: Timestamp,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query parameter value (`?namespace=…`).
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 20px;display:flex;align-items:baseline;gap:16px}
header h1{font-size:18px;margin:0}header .v{color:#a9b1c2}
main{padding:12px 20px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;margin-bottom:14px}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-weight:600;color:#4a5468;background:#fafbfc;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.id{white-space:nowrap}
code{font:12px ui-monospace,Menlo,Consolas,monospace;color:#3b4252}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e4e7ec;color:#1d2433;white-space:nowrap}
.running,.ok{background:#d8f3dc;color:#1b5e20}.waiting,.draining{background:#fff3cd;color:#7a5b00}
.backoff,.rejected,.bad{background:#fde2e1;color:#9b1c1c}.finished{background:#e4e7ec;color:#4a5468}
.counts{display:flex;flex-wrap:wrap;gap:10px}
.counts a{text-decoration:none;color:inherit;border:1px solid #dde1e8;border-radius:6px;padding:6px 12px;min-width:80px}
.counts a b{display:block;font-size:20px}
.err{color:#9b1c1c}.muted{color:#7b8496}
form{display:flex;gap:12px;align-items:center;margin-bottom:8px}
footer{padding:0 20px 16px;color:#7b8496}
";

/// Renders the whole page.
pub fn render(data: &PageData<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024 + data.targets.len() * 512);
    let health = if !data.stopped.is_empty() {
        format!(
            "<span class=\"badge bad\">unhealthy: stopped {}</span>",
            escape(&data.stopped.join(", "))
        )
    } else if data.synced {
        "<span class=\"badge ok\">ready</span>".to_string()
    } else {
        "<span class=\"badge waiting\">waiting for the first discovery sync</span>".to_string()
    };
    let _ = writeln!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>kube-log-relay</title><style>{STYLE}</style></head><body>\n\
         <header><h1>kube-log-relay</h1><span class=\"v\">{}</span>{health}</header>\n<main>",
        escape(data.version)
    );
    summary(&mut out, data);
    receivers(&mut out, data);
    connections(&mut out, data);
    cluster(&mut out, data);
    targets(&mut out, data);
    out.push_str(
        "</main>\n<footer>JSON: <a href=\"/api/v1/targets\">targets</a> · \
         <a href=\"/api/v1/receivers\">receivers</a> · <a href=\"/api/v1/config\">config</a> · \
         <a href=\"/metrics\">metrics</a></footer>\n</body></html>\n",
    );
    out
}

fn summary(out: &mut String, data: &PageData<'_>) {
    let _ = write!(
        out,
        "<section id=\"summary\"><h2>Targets by state</h2><div class=\"counts\">"
    );
    for state in STATES {
        let n = data.targets.iter().filter(|t| t.state == state).count();
        let _ = write!(
            out,
            "<a href=\"/?state={state}\" class=\"{}\" id=\"count-{state}\"><b>{n}</b>{state}</a>",
            if n > 0 { state } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "<a href=\"/\" id=\"count-all\"><b>{}</b>all</a></div></section>",
        data.targets.len()
    );
}

fn receivers(out: &mut String, data: &PageData<'_>) {
    out.push_str(
        "<section id=\"receivers\"><h2>Receivers</h2><table id=\"receivers-table\"><thead><tr>\
         <th>name</th><th>state</th><th>queued</th><th>in-flight batches</th><th>sent entries</th>\
         <th>dropped entries</th><th>last success</th><th>last error</th></tr></thead><tbody>\n",
    );
    if data.receivers.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">no receiver</td></tr>\n");
    }
    for r in data.receivers {
        let _ = write!(out, "<tr><td><code>{}</code></td>", escape(&r.name));
        match &r.status {
            None => out.push_str(
                "<td><span class=\"badge bad\">stopped</span></td><td colspan=\"6\"></td></tr>\n",
            ),
            Some(s) => {
                let _ = writeln!(
                    out,
                    "<td><span class=\"badge ok\">running</span></td>\
                     <td class=\"n\">{} of {} ({:.0}%)</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                    bytes(s.queued_bytes as u64),
                    bytes(s.buffer_size as u64),
                    100.0 * s.queued_bytes as f64 / s.buffer_size.max(1) as f64,
                    s.in_flight_batches,
                    s.sent_entries,
                    s.dropped_entries,
                    ago(s.last_success, data.now),
                    match &s.last_error {
                        Some(e) => format!("{} ({})", escape(e), ago(s.last_error_at, data.now)),
                        None => String::new(),
                    },
                );
            }
        }
    }
    out.push_str("</tbody></table></section>\n");
}

fn connections(out: &mut String, data: &PageData<'_>) {
    let streams: usize = data.connections.iter().map(|c| c.streams).sum();
    let _ = writeln!(
        out,
        "<section id=\"connections\"><h2>API connections ({} carrying {streams} requests)</h2>\
         <table id=\"connections-table\"><thead><tr><th>connection</th><th>protocol</th>\
         <th>open requests</th><th>limit</th></tr></thead><tbody>",
        data.connections.len()
    );
    if data.connections.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"muted\">no connection open</td></tr>\n");
    }
    for c in data.connections {
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">#{}</td><td><code>{}</code></td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            c.id, c.protocol, c.streams, c.limit
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn cluster(out: &mut String, data: &PageData<'_>) {
    out.push_str("<section id=\"cluster\"><h2>Cluster</h2>");
    match (data.clustering.enabled, data.cluster) {
        (true, Some(c)) => {
            let lease = if c.have_lease {
                "<span class=\"badge ok\">lease held</span>"
            } else {
                "<span class=\"badge waiting\">no lease yet: tailing nothing</span>"
            };
            let _ = writeln!(
                out,
                "<p>This replica: <code>{}</code> {lease}, Leases in namespace <code>{}</code>; \
                 it tails {} targets and waits for {} to be released.</p>",
                escape(&c.identity),
                escape(&c.namespace),
                c.held,
                c.waiting
            );
            out.push_str(
                "<table id=\"members-table\"><thead><tr><th>member</th><th>owned targets</th>\
                 </tr></thead><tbody>\n",
            );
            for m in &c.members {
                let owned = c.targets_by_owner.get(m).copied().unwrap_or(0);
                let me = if *m == c.identity {
                    " (this replica)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code>{me}</td><td class=\"n\">{owned}</td></tr>",
                    escape(m)
                );
            }
            out.push_str("</tbody></table>");
        }
        _ => out.push_str("<p>Clustering disabled: this replica tails every target.</p>"),
    }
    out.push_str("</section>\n");
}

fn select(out: &mut String, name: &str, label: &str, options: &[&str], chosen: Option<&str>) {
    let _ = write!(
        out,
        "<label>{label} <select name=\"{name}\"><option value=\"\">all</option>"
    );
    for o in options {
        let o = escape(o);
        let selected = if chosen.map(escape).as_deref() == Some(o.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option value=\"{o}\"{selected}>{o}</option>");
    }
    out.push_str("</select></label>");
}

/// Pod and container of a target: its identity's, or the discovered labels of a rejected one.
fn pod_and_container(t: &TargetView) -> (&str, &str) {
    match &t.id {
        Some(id) => (&id.pod, &id.container),
        None => {
            let get = |a: &str, b: &str| {
                t.discovered_labels
                    .get(a)
                    .or_else(|| t.discovered_labels.get(b))
                    .map(String::as_str)
                    .unwrap_or("")
            };
            (
                get("__meta_kubernetes_pod_name", "__pod_name__"),
                get(
                    "__meta_kubernetes_pod_container_name",
                    "__pod_container_name__",
                ),
            )
        }
    }
}

fn targets(out: &mut String, data: &PageData<'_>) {
    let shown: Vec<&TargetView> = data
        .targets
        .iter()
        .filter(|t| data.filter.matches(t))
        .collect();
    let namespaces: BTreeSet<&str> = data.targets.iter().filter_map(namespace_of).collect();
    let namespaces: Vec<&str> = namespaces.into_iter().collect();
    let _ = write!(
        out,
        "<section id=\"targets\"><h2>Targets ({} of {})</h2><form method=\"get\" action=\"/\">",
        shown.len(),
        data.targets.len()
    );
    select(
        out,
        "namespace",
        "Namespace",
        &namespaces,
        data.filter.namespace.as_deref(),
    );
    select(out, "state", "State", &STATES, data.filter.state.as_deref());
    out.push_str("<button type=\"submit\">Filter</button> <a href=\"/\">clear</a></form>\n");
    out.push_str(
        "<table id=\"targets-table\"><thead><tr><th>namespace</th><th>pod</th><th>container</th>\
         <th>state</th><th>labels</th><th>last read</th><th>last entry</th><th>lines</th>\
         <th>bytes</th><th>reconnects</th><th>last error / reason</th></tr></thead><tbody>\n",
    );
    if shown.is_empty() {
        out.push_str("<tr><td colspan=\"11\" class=\"muted\">no target matches</td></tr>\n");
    }
    for t in shown {
        let (pod, container) = pod_and_container(t);
        let labels = t
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let state = escape(&t.state);
        let _ = write!(
            out,
            "<tr data-state=\"{state}\"><td class=\"id\">{}</td><td class=\"id\">{}</td><td class=\"id\">{}</td>\
             <td><span class=\"badge {state}\">{state}</span></td><td><code>{labels}</code></td>",
            escape(namespace_of(t).unwrap_or("")),
            escape(pod),
            escape(container),
        );
        match &t.status {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "<td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"err\">{}</td></tr>",
                    ago(s.last_read, data.now),
                    ago(s.last_entry_timestamp, data.now),
                    s.lines,
                    bytes(s.bytes),
                    s.reconnects,
                    escape(s.last_error.as_deref().unwrap_or("")),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "<td></td><td></td><td></td><td></td><td></td><td class=\"err\">{}</td></tr>",
                    escape(t.reason.as_deref().unwrap_or(""))
                );
            }
        }
    }
    out.push_str("</tbody></table>");
    let _ = writeln!(
        out,
        "<p class=\"muted\">The same as JSON: <a href=\"/api/v1/targets{}\">/api/v1/targets</a></p></section>",
        filter_query(data.filter)
    );
}

/// `?namespace=…&state=…` for the filter in force, empty when none.
fn filter_query(filter: &TargetFilter) -> String {
    let mut params = Vec::new();
    if let Some(ns) = &filter.namespace {
        params.push(format!("namespace={}", query_escape(ns)));
    }
    if let Some(s) = &filter.state {
        params.push(format!("state={}", query_escape(s)));
    }
    if params.is_empty() {
        String::new()
    } else {
        escape(&format!("?{}", params.join("&")))
    }
}

/// `"12s ago"` in a `<time>` element carrying the exact time, or `never`.
fn ago(at: Option<Timestamp>, now: Timestamp) -> String {
    let Some(at) = at else {
        return "<span class=\"muted\">never</span>".to_string();
    };
    let secs = now.as_second().saturating_sub(at.as_second()).max(0);
    let human = match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    };
    format!("<time datetime=\"{at}\" title=\"{at}\">{human}</time>")
}

/// `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::ReceiverStatus;
    use crate::tail::status::{TailerSnapshot, TargetState};
    use crate::target::{LabelMap, TargetId};

    fn target(ns: &str, pod: &str, state: TargetState, lines: u64) -> TargetView {
        TargetView {
            id: Some(TargetId {
                namespace: ns.into(),
                pod: pod.into(),
                container: "app".into(),
                uid: format!("uid-{pod}"),
            }),
            labels: LabelMap::from([
                ("app".to_string(), "<web>".to_string()),
                ("namespace".to_string(), ns.to_string()),
            ]),
            discovered_labels: LabelMap::new(),
            tenant: None,
            state: state.as_str().into(),
            reason: None,
            status: Some(TailerSnapshot {
                state,
                lines,
                bytes: 2048,
                reconnects: 1,
                last_read: Some("2030-01-01T00:00:00Z".parse().expect("ts")),
                last_error: Some("status 500: \"boom\" & <b>".into()),
                ..TailerSnapshot::default()
            }),
            owner: None,
        }
    }

    fn rejected() -> TargetView {
        TargetView {
            id: None,
            labels: LabelMap::new(),
            discovered_labels: LabelMap::from([
                ("__meta_kubernetes_namespace".to_string(), "ops".to_string()),
                ("__meta_kubernetes_pod_name".to_string(), "odd".to_string()),
                (
                    "__meta_kubernetes_pod_container_name".to_string(),
                    "c".to_string(),
                ),
            ]),
            tenant: None,
            state: "rejected".into(),
            reason: Some("label \"__pod_uid__\" is missing".into()),
            status: None,
            owner: None,
        }
    }

    fn page(targets: &[TargetView], filter: &TargetFilter) -> String {
        let receivers = [
            ReceiverView {
                name: "primary".into(),
                running: true,
                status: Some(ReceiverStatus {
                    name: "primary".into(),
                    queued_bytes: 1024 * 1024,
                    buffer_size: 4 * 1024 * 1024,
                    in_flight_batches: 1,
                    last_success: Some("2030-01-01T00:00:00Z".parse().expect("ts")),
                    last_error: Some("429 <slow down>".into()),
                    last_error_at: Some("2030-01-01T00:00:40Z".parse().expect("ts")),
                    sent_entries: 10,
                    dropped_entries: 2,
                }),
            },
            ReceiverView {
                name: "gone".into(),
                running: false,
                status: None,
            },
        ];
        render(&PageData {
            version: "1.2.3",
            synced: true,
            stopped: vec![],
            targets,
            filter,
            receivers: &receivers,
            clustering: &ClusteringConfig::default(),
            cluster: None,
            connections: &[
                ConnectionStats {
                    id: 1,
                    protocol: "h2",
                    streams: 100,
                    limit: 100,
                },
                ConnectionStats {
                    id: 2,
                    protocol: "h2",
                    streams: 7,
                    limit: 100,
                },
            ],
            now: "2030-01-01T00:00:42Z".parse().expect("ts"),
        })
    }

    /// Every element the page uses is closed as often as it is opened.
    fn assert_balanced(html: &str) {
        for tag in [
            "html", "head", "body", "header", "main", "section", "table", "thead", "tbody", "tr",
            "th", "td", "form", "select", "option", "label", "code", "span", "time", "a", "p",
            "h1", "h2", "b", "div", "footer",
        ] {
            let opened = html.matches(&format!("<{tag}>")).count()
                + html.matches(&format!("<{tag} ")).count();
            let closed = html.matches(&format!("</{tag}>")).count();
            assert_eq!(
                opened, closed,
                "<{tag}> opened {opened} times, closed {closed}:\n{html}"
            );
        }
    }

    fn rows(html: &str) -> Vec<&str> {
        html.split("<tr data-state=").skip(1).collect()
    }

    #[test]
    fn shows_every_target_escaped_with_counts_receivers_and_cluster() {
        let all = [
            target("shop", "web-1", TargetState::Running, 7),
            target("shop", "web-2", TargetState::Backoff, 0),
            target("batch", "job-1", TargetState::Finished, 3),
            rejected(),
        ];
        let html = page(&all, &TargetFilter::default());
        assert_balanced(&html);
        assert_eq!(rows(&html).len(), 4);
        assert!(html.contains("<h2>Targets (4 of 4)</h2>"));
        assert!(html.contains("id=\"count-running\"><b>1</b>running</a>"));
        assert!(html.contains("id=\"count-rejected\"><b>1</b>rejected</a>"));
        assert!(html.contains("id=\"count-waiting\"><b>0</b>waiting</a>"));
        assert!(html.contains("<code>app=&lt;web&gt;, namespace=shop</code>"));
        assert!(html.contains("status 500: &quot;boom&quot; &amp; &lt;b&gt;"));
        assert!(!html.contains("<b>\"") && !html.contains("<web>"));
        assert!(html.contains("42s ago"));
        assert!(html.contains("<td class=\"n\">2.0 KiB</td>"));
        assert!(
            html.contains(
                "<td class=\"id\">ops</td><td class=\"id\">odd</td><td class=\"id\">c</td>"
            )
        );
        assert!(html.contains("label &quot;__pod_uid__&quot; is missing"));
        assert!(html.contains("1.0 MiB of 4.0 MiB (25%)"));
        assert!(html.contains("429 &lt;slow down&gt; (<time datetime=\"2030-01-01T00:00:40Z\""));
        assert!(html.contains("<code>gone</code></td><td><span class=\"badge bad\">stopped"));
        assert!(html.contains("Clustering disabled"));
        assert!(html.contains("<span class=\"badge ok\">ready</span>"));
        assert!(!html.contains("<script"), "no JavaScript");
        // Namespaces offered by the filter: every namespace seen, sorted.
        assert!(html.contains(
            "<option value=\"\">all</option><option value=\"batch\">batch</option>\
             <option value=\"ops\">ops</option><option value=\"shop\">shop</option>"
        ));
    }

    #[test]
    fn filters_by_namespace_and_state() {
        let all = [
            target("shop", "web-1", TargetState::Running, 7),
            target("shop", "web-2", TargetState::Backoff, 0),
            target("batch", "job-1", TargetState::Running, 3),
            rejected(),
        ];
        let filter = TargetFilter {
            namespace: Some("shop".into()),
            state: Some("running".into()),
        };
        let html = page(&all, &filter);
        assert_balanced(&html);
        let shown = rows(&html);
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("<td class=\"id\">web-1</td>"));
        assert!(html.contains("<h2>Targets (1 of 4)</h2>"));
        // Counts stay global; the chosen options stay selected.
        assert!(html.contains("id=\"count-running\"><b>2</b>running</a>"));
        assert!(html.contains("<option value=\"shop\" selected>shop</option>"));
        assert!(html.contains("<option value=\"running\" selected>running</option>"));
        assert!(html.contains("href=\"/api/v1/targets?namespace=shop&amp;state=running\""));

        let ops = TargetFilter {
            namespace: Some("ops".into()),
            state: None,
        };
        let html = page(&all, &ops);
        assert_eq!(rows(&html).len(), 1);
        assert!(rows(&html)[0].starts_with("\"rejected\""));

        let none = TargetFilter {
            namespace: Some("nowhere".into()),
            state: None,
        };
        let html = page(&all, &none);
        assert_balanced(&html);
        assert!(rows(&html).is_empty());
        assert!(html.contains("no target matches"));
    }

    #[test]
    fn helpers() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(query_escape("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        let now: Timestamp = "2030-01-02T00:00:00Z".parse().expect("ts");
        assert_eq!(ago(None, now), "<span class=\"muted\">never</span>");
        let hour_ago: Timestamp = "2030-01-01T23:00:00Z".parse().expect("ts");
        assert!(ago(Some(hour_ago), now).ends_with(">1h ago</time>"));
    }
}

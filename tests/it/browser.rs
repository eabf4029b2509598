//! The status page as a browser renders it (SPEC §8.3): a relay serves `/`, headless Chromium
//! loads it and dumps the DOM it built, and the targets table must hold the expected pods.
//!
//! Kept apart so it can be skipped with a clear message where no browser is installed
//! ([`support::require_tool`]); under `CI=true` a missing browser fails it, and `.ci/run`
//! installs Debian's `chromium`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, all_finished};

/// Loads `url` in headless Chromium and returns the serialized DOM after the page loaded.
async fn dump_dom(browser: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of each cell of each row of the table with `id`, from a serialized DOM.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let Some(start) = dom.find(&format!("<table id=\"{id}\"")) else {
        return Vec::new();
    };
    let table = &dom[start..];
    let table = &table[..table.find("</table>").unwrap_or(table.len())];
    let body = table.split("<tbody>").nth(1).unwrap_or("");
    body.split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let cell = &cell[cell.find('>').map_or(0, |i| i + 1)..];
                    let cell = &cell[..cell.find("</td>").unwrap_or(cell.len())];
                    strip_tags(cell)
                })
                .collect()
        })
        .collect()
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

#[actix_rt::test]
async fn chromium_renders_the_targets_table_with_the_expected_pods() {
    let Some(browser) = support::require_tool(
        &["chromium", "chromium-browser"],
        "apt-get install chromium",
    ) else {
        return;
    };
    let sim = support::sim().await;
    let sink = support::sink().await;
    for (ns, pod) in [("shop", "web-0"), ("shop", "web-1"), ("batch", "nightly")] {
        sim.add_pod(
            PodSpec::new(ns, pod)
                .label("app", "web")
                .restart_policy(RestartPolicy::Never)
                .container(ContainerSpec::new("app").rate(200.0).total_lines(25, 0)),
        );
    }
    let config = support::base_config(&sim) + &support::loki_table("primary", &sink, "");
    let relay = support::relay(&config).await;
    all_finished(&relay, 3).await;
    let base = format!("http://{}", relay.http_addr());

    let dom = dump_dom(&browser, &format!("{base}/")).await;
    assert!(dom.contains("<title>kube-log-relay</title>"), "{dom}");
    let rows = table_rows(&dom, "targets-table");
    let mut pods: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 11, "{r:?}");
            (
                r[0].clone(),
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[7].clone(),
            )
        })
        .collect();
    pods.sort();
    let row = |ns: &str, pod: &str| {
        (
            ns.to_string(),
            pod.to_string(),
            "app".to_string(),
            "finished".to_string(),
            "25".to_string(),
        )
    };
    assert_eq!(
        pods,
        [
            row("batch", "nightly"),
            row("shop", "web-0"),
            row("shop", "web-1")
        ]
    );
    let receivers = table_rows(&dom, "receivers-table");
    assert_eq!(receivers.len(), 1);
    assert_eq!(receivers[0][0], "primary");
    assert_eq!(receivers[0][1], "running");

    // The filter form's query, as a browser submits it.
    let dom = dump_dom(&browser, &format!("{base}/?namespace=shop&state=finished")).await;
    let mut shown: Vec<String> = table_rows(&dom, "targets-table")
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    shown.sort();
    assert_eq!(shown, ["web-0", "web-1"]);
    relay.shutdown().await;
}

//! The Kubernetes client's connection pool against the simulator over TLS and HTTP/2 (SPEC §4.1,
//! §10): streams per connection, the server's limit, a dying connection, proxies, redirects and
//! clear errors for a wrong CA, server name or token; and over plain HTTP, followed logs on
//! connections of their own through a forward proxy.

use std::collections::BTreeMap;

use kube_log_relay::sim::proxy::Proxy;
use kube_log_relay::sim::{AuthOptions, ContainerSpec, PodSpec, RestartPolicy, Sim, SimOptions};

use crate::support::{self, RelayProcess, eventually};

/// A simulator serving HTTPS with HTTP/2 by ALPN and `server_limit` streams per connection.
async fn tls_sim(server_limit: u32, auth: Option<AuthOptions>) -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            tls: true,
            max_concurrent_streams: server_limit,
            auth,
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .expect("simulator starts");
    (sim, dir)
}

/// `pods` pods of three containers; each writes `lines` lines at `rate` and exits 0 (Never), or
/// keeps running without end when `lines` is `None`.
fn add_pods(sim: &Sim, pods: usize, rate: f64, lines: Option<u64>) {
    for p in 0..pods {
        let mut pod =
            PodSpec::new("load", format!("p-{p:03}")).restart_policy(RestartPolicy::Never);
        for c in ["a", "b", "c"] {
            let mut container = ContainerSpec::new(c).rate(rate);
            if let Some(n) = lines {
                container = container.total_lines(n, 0);
            }
            pod = pod.container(container);
        }
        sim.add_pod(pod);
    }
}

/// A relay configuration for the simulator: its CA if it serves TLS, a generous client rate
/// limit (opens are not what these tests measure) and `extra` lines in `[kubernetes]`.
fn config(sim: &Sim, sink: &kube_log_relay::sim::loki::LokiSink, extra: &str) -> String {
    let tls = sim.tls_files().map_or(String::new(), |f| {
        format!(
            "\n[kubernetes.tls_config]\nca_file = \"{}\"\n",
            f.ca.display()
        )
    });
    format!(
        r#"
[kubernetes]
api_server = "{url}"
qps = 2000
burst = 2000
{extra}
{tls}

[tail]
min_backoff = "50ms"
max_backoff = "500ms"
terminated_grace = "1s"

[server]
listen = "127.0.0.1:0"
"#,
        url = sim.url(),
    ) + &support::loki_table("a", sink, "")
}

/// Waits until `n` requests are open at the simulator (log streams and the pod watch).
async fn wait_streams(sim: &Sim, n: u64) {
    let what = format!("{n} requests open at the simulator");
    eventually(&what, || sim.stats().streams_open >= n).await;
}

#[actix_rt::test]
async fn three_hundred_streams_share_four_connections_and_every_line_arrives_once() {
    let _heavy = support::heavy().await;
    let (sim, _dir) = tls_sim(250, None).await;
    // 300 containers, 40 lines each over 8 s: streams stay open while the count is taken.
    add_pods(&sim, 100, 5.0, Some(40));
    let sink = support::sink().await;
    let relay = support::relay(&config(&sim, &sink, "")).await;
    // 300 log streams and the pod watch.
    wait_streams(&sim, 301).await;
    let stats = sim.stats();
    assert!(
        (3..=4).contains(&stats.connections_open),
        "⌈301/100⌉ = 4 connections at most, got {stats:?}"
    );
    assert!(stats.max_streams_per_connection <= 100, "{stats:?}");
    let page = support::http_get(relay.http_addr(), "/").await.1;
    assert!(
        page.contains("API connections ("),
        "the status page lists the connections"
    );
    support::all_finished(&relay, 300).await;
    relay.shutdown().await;
    for p in 0..100 {
        for c in ["a", "b", "c"] {
            let pod = format!("p-{p:03}");
            support::assert_exactly_once(
                &format!("load/{pod}/{c}"),
                &sim.written_lines("load", &pod, c),
                &support::lines_of(&sink.entries(), "load", &pod, c),
            );
        }
    }
    assert!(
        sim.stats().connections_opened <= 5,
        "no connection churn: {:?}",
        sim.stats()
    );
}

/// Opens 300 idle follow streams with `extra` settings and returns the connections the
/// simulator counted once they are all open.
async fn connections_for(server_limit: u32, extra: &str) -> (u64, u64) {
    let _heavy = support::heavy().await;
    let (sim, _dir) = tls_sim(server_limit, None).await;
    add_pods(&sim, 100, 0.5, None);
    let sink = support::sink().await;
    let relay = support::relay(&config(&sim, &sink, extra)).await;
    wait_streams(&sim, 301).await;
    let stats = sim.stats();
    relay.shutdown().await;
    (stats.connections_open, stats.max_streams_per_connection)
}

#[actix_rt::test]
async fn our_limit_and_the_servers_limit_the_smaller_wins() {
    // Ours 50 under the server's 250: ⌈301/50⌉ = 7.
    let (connections, most) = connections_for(250, "max_streams_per_connection = 50").await;
    assert!((6..=8).contains(&connections), "{connections}");
    assert!(most <= 50, "{most}");
    // The server's 20 under ours (100): at least ⌈300/20⌉ = 15, none over 20.
    let (connections, most) = connections_for(20, "").await;
    assert!(connections >= 15, "{connections}");
    assert!(most <= 20, "{most}");
}

#[actix_rt::test]
async fn a_killed_connection_reopens_only_its_own_streams_from_their_cursors() {
    let _heavy = support::heavy().await;
    let (sim, _dir) = tls_sim(250, None).await;
    // Containers that keep writing: every stream stays open, so a second open of a container's
    // log can only be a reopen after the kill.
    add_pods(&sim, 100, 5.0, None);
    let sink = support::sink().await;
    let relay = support::relay(&config(&sim, &sink, "")).await;
    wait_streams(&sim, 301).await;
    let received = |pod: &str, c: &str| support::lines_of(&sink.entries(), "load", pod, c);
    let all = || (0..100).flat_map(|p| ["a", "b", "c"].map(move |c| (format!("p-{p:03}"), c)));
    eventually("every container's lines flow before the cut", || {
        all().all(|(pod, c)| received(&pod, c).len() >= 5)
    })
    .await;
    let killed = sim.kill_busiest_connection().expect("a connection to kill");
    assert!(killed.open_streams >= 90, "{killed:?}");
    let at_kill: BTreeMap<(String, &str), usize> = all()
        .map(|(pod, c)| ((pod.clone(), c), received(&pod, c).len()))
        .collect();
    wait_streams(&sim, 301).await;
    eventually("every container delivers new lines after the cut", || {
        all().all(|(pod, c)| received(&pod, c).len() > at_kill[&(pod.clone(), c)])
    })
    .await;
    let mut opens: BTreeMap<u64, usize> = BTreeMap::new();
    for (pod, c) in all() {
        *opens.entry(sim.log_opens("load", &pod, c)).or_default() += 1;
        // What arrived is the start of what was written: nothing lost, nothing twice, in order.
        let got = received(&pod, c);
        let written = sim.written_lines("load", &pod, c);
        assert_eq!(got[..], written[..got.len()], "load/{pod}/{c}");
    }
    relay.shutdown().await;
    // The streams of the killed connection (the watch may have been one of them) opened twice,
    // every other stream once.
    let reopened = opens.get(&2).copied().unwrap_or(0) as u64;
    assert!(
        reopened == killed.open_streams || reopened + 1 == killed.open_streams,
        "opens per stream {opens:?}, killed {killed:?}"
    );
    assert_eq!(
        opens
            .keys()
            .copied()
            .filter(|n| !(1..=2).contains(n))
            .count(),
        0,
        "{opens:?}"
    );
}

#[actix_rt::test]
async fn through_a_connect_proxy_and_around_it() {
    let (sim, _dir) = tls_sim(250, None).await;
    add_pods(&sim, 1, 50.0, Some(20));
    let proxy = Proxy::start().await.expect("proxy starts");
    let sink = support::sink().await;
    let via = format!(
        "proxy_url = \"{}\"\n[kubernetes.proxy_connect_header]\nX-Relay-Proxy = [\"yes\"]",
        proxy.url()
    );
    let relay = support::relay(&config(&sim, &sink, &via)).await;
    support::all_finished(&relay, 3).await;
    relay.shutdown().await;
    let target = sim.url().trim_start_matches("https://").to_string();
    let requests = proxy.requests();
    assert!(
        !requests.is_empty(),
        "the proxy carried the API connections"
    );
    for r in &requests {
        assert_eq!(r.method, "CONNECT", "{r:?}");
        assert_eq!(r.target, target, "{r:?}");
        assert_eq!(r.header("x-relay-proxy"), Some("yes"), "{r:?}");
    }
    assert_eq!(
        support::lines_of(&sink.entries(), "load", "p-000", "a"),
        sim.written_lines("load", "p-000", "a")
    );

    // no_proxy: the simulator's address bypasses the proxy.
    let (sim, _dir) = tls_sim(250, None).await;
    add_pods(&sim, 1, 50.0, Some(20));
    let proxy = Proxy::start().await.expect("proxy starts");
    let sink = support::sink().await;
    let around = format!(
        "proxy_url = \"{}\"\nno_proxy = \"127.0.0.0/8\"",
        proxy.url()
    );
    let relay = support::relay(&config(&sim, &sink, &around)).await;
    support::all_finished(&relay, 3).await;
    relay.shutdown().await;
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[actix_rt::test]
async fn followed_logs_over_plain_http_reach_a_forward_proxy_in_absolute_form() {
    // Plain HTTP: each followed log has a connection of its own (`kube::pool::stream`), which
    // through a forward proxy must carry the absolute URL.
    let sim = Sim::start_with("127.0.0.1:0", SimOptions::default())
        .await
        .expect("simulator starts");
    add_pods(&sim, 1, 50.0, Some(20));
    let proxy = Proxy::start().await.expect("proxy starts");
    let sink = support::sink().await;
    let via = format!("proxy_url = \"{}\"", proxy.url());
    let relay = support::relay(&config(&sim, &sink, &via)).await;
    support::all_finished(&relay, 3).await;
    relay.shutdown().await;
    let logs: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/log?"))
        .collect();
    assert!(logs.len() >= 3, "a request per container: {logs:?}");
    for r in &logs {
        assert_eq!(r.method, "GET", "{r:?}");
        assert!(r.target.starts_with(&sim.url()), "{r:?}");
        assert_eq!(
            r.header("host"),
            Some(sim.url().trim_start_matches("http://")),
            "{r:?}"
        );
    }
    for c in ["a", "b", "c"] {
        assert_eq!(
            support::lines_of(&sink.entries(), "load", "p-000", c),
            sim.written_lines("load", "p-000", c),
            "container {c}"
        );
    }
}

#[actix_rt::test]
async fn proxy_from_environment_uses_https_proxy() {
    let (sim, _dir) = tls_sim(250, None).await;
    add_pods(&sim, 1, 20.0, None);
    let proxy = Proxy::start().await.expect("proxy starts");
    let sink = support::sink().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(&sim, &sink, "proxy_from_environment = true");
    // A child process: the environment is the process's, not this test's.
    let mut relay = RelayProcess::start_with_env(
        dir.path(),
        &text,
        0,
        &[("HTTPS_PROXY", proxy.url().as_str()), ("NO_PROXY", "")],
    );
    let target = sim.url().trim_start_matches("https://").to_string();
    eventually("the relay tunnels through HTTPS_PROXY", || {
        relay.alive() && proxy.connect_targets().contains(&target)
    })
    .await;
    sim.wait_written("load", "p-000", "a", 5).await;
    eventually("lines arrive through the proxy", || {
        !support::lines_of(&sink.entries(), "load", "p-000", "a").is_empty()
    })
    .await;
    relay.terminate().await;
}

#[actix_rt::test]
async fn a_wrong_ca_or_server_name_is_named_and_retried_without_a_crash() {
    let (sim, _dir) = tls_sim(250, None).await;
    add_pods(&sim, 1, 1.0, None);
    let sink = support::sink().await;
    let other = tempfile::tempdir().expect("temp dir");
    // Another simulator's CA: the server's certificate does not chain to it.
    let (foreign, _fdir) = tls_sim(250, None).await;
    let text = config(&sim, &sink, "").replace(
        &sim.tls_files().expect("files").ca.display().to_string(),
        &foreign.tls_files().expect("files").ca.display().to_string(),
    );
    let mut relay = RelayProcess::start(other.path(), &text, 0);
    eventually("three refused handshakes", || {
        relay.alive() && sim.stats().handshake_failures >= 3
    })
    .await;
    let log = relay.log();
    assert!(log.contains("kubernetes.tls_config"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    relay.terminate().await;

    // The right CA but a server name the certificate does not carry.
    let text = config(&sim, &sink, "") + "";
    let text = text.replace(
        "[kubernetes.tls_config]\n",
        "[kubernetes.tls_config]\nserver_name = \"not-the-api.example\"\n",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let before = sim.stats().handshake_failures;
    let mut relay = RelayProcess::start(dir.path(), &text, 1);
    eventually("refused handshakes for the wrong name", || {
        relay.alive() && sim.stats().handshake_failures >= before + 2
    })
    .await;
    let log = relay.log();
    assert!(log.contains("kubernetes.tls_config"), "{log}");
    assert!(
        log.contains("not-the-api.example") || log.contains("NotValidForName"),
        "{log}"
    );
    relay.terminate().await;
}

#[actix_rt::test]
async fn a_rejected_token_is_named_and_retried_then_recovers() {
    let auth = AuthOptions {
        bearer_tokens: vec!["good".into()],
        ..Default::default()
    };
    let (sim, _dir) = tls_sim(250, Some(auth)).await;
    add_pods(&sim, 1, 20.0, None);
    let sink = support::sink().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "bad\n").expect("write token");
    let text = config(
        &sim,
        &sink,
        &format!("bearer_token_file = \"{}\"", token.display()),
    );
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    eventually("three rejected tokens", || {
        relay.alive() && sim.rejected_tokens() >= 3
    })
    .await;
    let log = relay.log();
    assert!(log.contains("401"), "{log}");
    assert!(log.contains("kubernetes.bearer_token"), "{log}");
    // The file is rotated to a good token: the relay recovers without a restart.
    std::fs::write(&token, "good\n").expect("rotate token");
    eventually("lines arrive after the token is fixed", || {
        relay.alive() && !support::lines_of(&sink.entries(), "load", "p-000", "a").is_empty()
    })
    .await;
    relay.terminate().await;
}

#[actix_rt::test]
async fn redirects_are_followed_or_named() {
    // An API server that moved its pod list: `/api/v1/pods` redirects to `/moved/...`.
    let pod_list = serde_json::json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
        "items": [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d"}}],
    });
    let app = axum::Router::new()
        .route(
            "/api/v1/pods",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, "/moved/api/v1/pods")],
                )
            }),
        )
        .route(
            "/moved/api/v1/pods",
            axum::routing::get(move || async move { axum::Json(pod_list) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let list = |follow: bool| {
        let text = format!(
            "[kubernetes]\napi_server = \"{server}\"\nfollow_redirects = {follow}\n[stdout]\n"
        );
        async move {
            let config = kube_log_relay::config::parse(&text, &|_| None).expect("valid");
            let client = kube_log_relay::kube::build_client(&config.kubernetes)
                .await
                .expect("client");
            kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client)
                .list(&Default::default())
                .await
        }
    };
    let pods = list(true).await.expect("the redirect is followed");
    assert_eq!(pods.items.len(), 1);
    let err = list(false).await.expect_err("not followed").to_string();
    assert!(err.contains("follow_redirects"), "{err}");
    assert!(
        err.contains("/moved/api/v1/pods"),
        "names the Location: {err}"
    );
}

/// Tails one short-lived container through a relay whose `[kubernetes]` TLS part is `tls`
/// (the `api_server` line is added) and checks every line arrived once; returns the
/// simulator's connections while the relay still ran.
async fn tails_with(sim: &Sim, tls: &str, pod: &str) -> kube_log_relay::sim::SimStats {
    sim.add_pod(
        PodSpec::new("tls", pod)
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(20, 0)),
    );
    let sink = support::sink().await;
    let text = format!(
        "[kubernetes]\napi_server = \"{}\"\n{tls}\n[tail]\nterminated_grace = \"1s\"\n[server]\nlisten = \"127.0.0.1:0\"\n",
        sim.url()
    ) + &support::loki_table("a", &sink, "");
    let relay = support::relay(&text).await;
    eventually(&format!("tls/{pod}/c delivered through {tls:?}"), || {
        support::lines_of(&sink.entries(), "tls", pod, "c").len() == 20
    })
    .await;
    let stats = sim.stats();
    relay.shutdown().await;
    support::assert_exactly_once(
        &format!("tls/{pod}/c"),
        &sim.written_lines("tls", pod, "c"),
        &support::lines_of(&sink.entries(), "tls", pod, "c"),
    );
    stats
}

#[actix_rt::test]
async fn every_tls_setting_reaches_the_api_server() {
    let auth = AuthOptions {
        client_certs: true,
        ..Default::default()
    };
    let (sim, _dir) = tls_sim(250, Some(auth)).await;
    let files = sim.tls_files().expect("TLS files").clone();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read PEM");
    // Inline PEM, the certificate's other name, TLS 1.3 only.
    let inline = format!(
        "enable_http2 = true\n[kubernetes.tls_config]\nca_pem = '''\n{}'''\ncert_pem = '''\n{}'''\nkey_pem = '''\n{}'''\nserver_name = \"localhost\"\nmin_version = \"TLS13\"\n",
        read(&files.ca),
        read(&files.client_cert),
        read(&files.client_key)
    );
    tails_with(&sim, &inline, "inline").await;
    // Files, and no CA at all but insecure_skip_verify.
    let insecure = format!(
        "[kubernetes.tls_config]\ninsecure_skip_verify = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.client_cert.display(),
        files.client_key.display()
    );
    let stats = tails_with(&sim, &insecure, "insecure").await;
    assert!(
        stats
            .connections
            .iter()
            .any(|c| c.protocol == "h2" && c.client_cert),
        "HTTP/2 by ALPN with the client certificate: {stats:?}"
    );

    // enable_http2 = false: HTTP/1.1 only, one connection per open request.
    let (sim, _dir) = tls_sim(250, None).await;
    let ca = sim.tls_files().expect("files").ca.display().to_string();
    let h1 = format!("enable_http2 = false\n[kubernetes.tls_config]\nca_file = \"{ca}\"\n");
    let stats = tails_with(&sim, &h1, "http1").await;
    assert!(
        !stats.connections.is_empty() && stats.connections.iter().all(|c| c.protocol == "http/1.1"),
        "{stats:?}"
    );
}

#[actix_rt::test]
async fn streams_that_are_not_read_do_not_stall_the_others_on_their_connection() {
    let (sim, _dir) = tls_sim(250, None).await;
    // Five containers with 4 MB of log each, already written.
    for p in 0..5 {
        sim.add_pod(
            PodSpec::new("big", format!("b-{p}"))
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("c")
                        .rate(200_000.0)
                        .line_size(200)
                        .total_lines(20_000, 0),
                ),
        );
    }
    for p in 0..5 {
        sim.wait_written("big", &format!("b-{p}"), "c", 20_000)
            .await;
    }
    let ca = sim.tls_files().expect("files").ca.display().to_string();
    let text = format!(
        "[kubernetes]\napi_server = \"{}\"\n[kubernetes.tls_config]\nca_file = \"{ca}\"\n[stdout]\n",
        sim.url()
    );
    let config = kube_log_relay::config::parse(&text, &|_| None).expect("valid");
    let client = kube_log_relay::kube::build_client(&config.kubernetes)
        .await
        .expect("client");
    let api = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "big");
    let params = kube::api::LogParams {
        container: Some("c".into()),
        follow: true,
        ..Default::default()
    };
    // Four streams opened and never read: a tailer whose receiver pushes back.
    let mut stalled = Vec::new();
    for p in 0..4 {
        stalled.push(
            api.log_stream(&format!("b-{p}"), &params)
                .await
                .expect("open"),
        );
    }
    // The fifth, on the same HTTP/2 connection, reads its whole log.
    let read = async {
        use futures::AsyncReadExt as _;
        let mut body = Vec::new();
        api.log_stream("b-4", &params)
            .await
            .expect("open")
            .read_to_end(&mut body)
            .await
            .expect("read");
        body
    };
    let body = tokio::time::timeout(support::DEADLINE, read)
        .await
        .expect("the fifth stream is not starved by the four unread ones");
    assert_eq!(
        body.iter().filter(|b| **b == b'\n').count(),
        20_000,
        "every line of the fifth stream"
    );
    assert_eq!(sim.stats().connections_open, 1, "{:?}", sim.stats());
    drop(stalled);
}

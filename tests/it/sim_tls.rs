//! The simulator over TLS (SPEC §8.5, issue 16): HTTP/2 by ALPN with its SETTINGS limit,
//! connection and stream counters, killing one connection, every authentication mode, the
//! OAuth2 token endpoint, the CONNECT proxy, `sim --tls` from the command line and the real
//! kubectl with the kubeconfig it writes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_log_relay::sim::{
    AuthOptions, ContainerSpec, OAuth2Options, PodSpec, RestartPolicy, Sim, SimOptions, SimStats,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{DEADLINE, eventually};

type Body = Full<Bytes>;

/// A TLS simulator writing its files into a fresh temporary directory.
async fn tls_sim(options: SimOptions) -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            tls: true,
            state_dir: Some(dir.path().to_path_buf()),
            ..options
        },
    )
    .await
    .expect("simulator starts");
    (sim, dir)
}

/// A client identity: the simulator's own client pair, or one from another CA.
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    None,
    Sim,
    Foreign,
}

fn client_config(sim: &Sim, identity: Identity, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let pki = sim.pki().expect("a TLS simulator");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(pki.root_store());
    let foreign;
    let (cert, key) = match identity {
        Identity::None => (None, None),
        Identity::Sim => (Some(&pki.client_cert_pem), Some(&pki.client_key_pem)),
        Identity::Foreign => {
            foreign = kube_log_relay::sim::Pki::generate().unwrap();
            (
                Some(&foreign.client_cert_pem),
                Some(&foreign.client_key_pem),
            )
        }
    };
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// TLS over `tcp` to the simulator; returns the stream and the protocol ALPN chose.
async fn tls_over(
    tcp: TcpStream,
    sim: &Sim,
    identity: Identity,
    alpn: &[&[u8]],
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(sim, identity, alpn)));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // rustls reports a refused client certificate on the first read after the handshake in
    // TLS 1.3; callers see it as a failed request.
    let alpn = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"")).into_owned();
    Ok((tls, alpn))
}

/// One HTTP/2 connection to the simulator (TLS with ALPN `h2`).
async fn h2(sim: &Sim, identity: Identity) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = TcpStream::connect(sim.local_addr()).await.unwrap();
    let (tls, alpn) = tls_over(tcp, sim, identity, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(alpn, "h2");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// HTTP/2 with prior knowledge over plain TCP (h2c).
async fn h2c(sim: &Sim) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = TcpStream::connect(sim.local_addr()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> http::Request<Body> {
    let mut r = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Sends one request and reads the whole answer.
async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    req: http::Request<Body>,
) -> (u16, String) {
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET over a fresh HTTP/2 connection.
async fn get(sim: &Sim, identity: Identity, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut sender = h2(sim, identity).await;
    send(&mut sender, request("GET", path, headers, "")).await
}

fn follow_path(ns: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{pod}/log?follow=true")
}

fn busy_pod(ns: &str, name: &str) -> PodSpec {
    PodSpec::new(ns, name).container(ContainerSpec::new("c").rate(20.0))
}

#[tokio::test]
async fn tls_serves_http2_by_alpn_and_http1_to_clients_that_ask_for_it() {
    let (sim, _dir) = tls_sim(SimOptions::default()).await;
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    let (status, body) = get(&sim, Identity::None, "/version", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"major\":\"1\""), "{body}");

    // HTTP/1.1 only.
    let tcp = TcpStream::connect(sim.local_addr()).await.unwrap();
    let (tls, alpn) = tls_over(tcp, &sim, Identity::None, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn, "http/1.1");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get("/api/v1/pods")
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let protocols: Vec<String> = sim
        .connection_stats()
        .into_iter()
        .map(|c| c.protocol)
        .collect();
    assert!(protocols.contains(&"http/1.1".to_string()), "{protocols:?}");

    // Plain HTTP to the TLS port is refused at the handshake and counted.
    let mut plain = TcpStream::connect(sim.local_addr()).await.unwrap();
    plain
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest).await;
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    eventually("the failed handshake is counted", || {
        sim.stats().handshake_failures == 1
    })
    .await;
}

/// Opens `extra` more follows than the limit on one HTTP/2 connection: the server's SETTINGS
/// hold the extras back (the client queues them) until a stream ends.
async fn settings_limit_holds(
    sim: &Sim,
    mut sender: hyper::client::conn::http2::SendRequest<Body>,
) {
    let limit = sim.stats().max_concurrent_streams as usize;
    sim.add_pod(busy_pod("ns", "p"));
    // One answered request first, so the client has the server's SETTINGS before it opens more.
    let (status, _) = send(&mut sender, request("GET", "/version", &[], "")).await;
    assert_eq!(status, 200);
    let answered = Arc::new(AtomicUsize::new(0));
    let (bodies_tx, mut bodies_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..limit + 3 {
        let mut sender = sender.clone();
        let (answered, bodies_tx) = (answered.clone(), bodies_tx.clone());
        tokio::spawn(async move {
            if let Ok(response) = sender
                .send_request(request("GET", &follow_path("ns", "p"), &[], ""))
                .await
            {
                answered.fetch_add(1, Ordering::SeqCst);
                let _ = bodies_tx.send(response.into_body());
            }
        });
    }
    eventually("the limit's worth of follows answered", || {
        answered.load(Ordering::SeqCst) == limit
    })
    .await;
    let conn = sim
        .connection_stats()
        .into_iter()
        .find(|c| c.open_streams > 0)
        .unwrap();
    assert_eq!(conn.open_streams, limit as u64);
    assert_eq!(sim.stats().max_streams_per_connection, limit as u64);
    // The extras wait; ending one follow lets exactly one more through.
    let first = bodies_rx.recv().await.unwrap();
    drop(first);
    eventually("one queued follow answered", || {
        answered.load(Ordering::SeqCst) == limit + 1
    })
    .await;
    assert_eq!(sim.stats().max_streams_per_connection, limit as u64);
    assert_eq!(sim.connections_opened(), 1);
}

#[tokio::test]
async fn the_http2_stream_limit_holds_over_tls() {
    let (sim, _dir) = tls_sim(SimOptions {
        max_concurrent_streams: 5,
        ..Default::default()
    })
    .await;
    assert_eq!(sim.stats().max_concurrent_streams, 5);
    let sender = h2(&sim, Identity::None).await;
    settings_limit_holds(&sim, sender).await;
}

#[tokio::test]
async fn the_http2_stream_limit_holds_over_plain_h2c() {
    let sim = Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            max_concurrent_streams: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sender = h2c(&sim).await;
    settings_limit_holds(&sim, sender).await;
    assert_eq!(sim.connection_stats()[0].protocol, "h2");
    assert!(!sim.stats().tls);
}

#[tokio::test]
async fn killing_the_busiest_connection_ends_only_its_streams() {
    let (sim, _dir) = tls_sim(SimOptions::default()).await;
    sim.add_pod(busy_pod("ns", "p"));
    let mut busy = h2(&sim, Identity::None).await;
    let mut quiet = h2(&sim, Identity::None).await;
    let mut busy_bodies = Vec::new();
    for _ in 0..3 {
        let response = busy
            .send_request(request("GET", &follow_path("ns", "p"), &[], ""))
            .await
            .unwrap();
        busy_bodies.push(response.into_body());
    }
    let mut quiet_body = quiet
        .send_request(request("GET", &follow_path("ns", "p"), &[], ""))
        .await
        .unwrap()
        .into_body();
    eventually("4 streams open", || sim.stats().streams_open == 4).await;

    // Over HTTP, on the quiet connection itself (the control paths are not counted as streams).
    let (status, body) = send(&mut quiet, request("POST", "/sim/kill-connection", &[], "")).await;
    assert_eq!(status, 200, "{body}");
    let killed: kube_log_relay::sim::ConnectionStats = serde_json::from_str(&body).unwrap();
    assert_eq!(killed.open_streams, 3);
    for mut b in busy_bodies {
        let end = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = b.frame().await {}
        })
        .await;
        assert!(end.is_ok(), "a stream of the killed connection still runs");
    }
    // The quiet connection's stream goes on.
    let before = sim.stats();
    for _ in 0..3 {
        let frame = tokio::time::timeout(DEADLINE, quiet_body.frame())
            .await
            .unwrap();
        assert!(matches!(frame, Some(Ok(_))), "{frame:?}");
    }
    eventually("only the quiet connection is open", || {
        sim.stats().connections_open == 1
    })
    .await;
    let after = sim.stats();
    assert_eq!(after.streams_open, 1, "{after:?}");
    assert_eq!(after.connections_opened, before.connections_opened);

    // The Rust API; and a connection that is gone is a 404 Status.
    assert!(!sim.kill_connection(killed.id));
    let (status, body) = send(
        &mut quiet,
        request(
            "POST",
            &format!("/sim/kill-connection?id={}", killed.id),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let stats: SimStats = serde_json::from_str(
        &send(&mut quiet, request("GET", "/sim/stats", &[], ""))
            .await
            .1,
    )
    .unwrap();
    assert_eq!(stats.connections.len(), 1);
    assert_eq!(stats.connections[0].open_streams, 1);
    assert!(sim.kill_busiest_connection().is_some());
    eventually("the last connection is gone", || {
        sim.stats().connections_open == 0
    })
    .await;
}

fn all_auth() -> AuthOptions {
    AuthOptions {
        client_certs: true,
        bearer_tokens: vec!["s3cret-token".into()],
        basic: vec![("alice".into(), "pa55".into())],
        custom: vec![("Custom".into(), "xyz".into())],
        oauth2: Some(OAuth2Options {
            client_id: "relay".into(),
            client_secret: "relay-secret".into(),
            expires_in: Duration::from_secs(1),
        }),
    }
}

#[tokio::test]
async fn each_authentication_mode_passes_and_anything_else_is_401() {
    let (sim, _dir) = tls_sim(SimOptions {
        auth: Some(all_auth()),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&sim, Identity::None, "/api/v1/pods", &[]).await;
    assert_eq!(status, 401);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    assert_eq!(get(&sim, Identity::Sim, "/api/v1/pods", &[]).await.0, 200);
    for (header, want) in [
        ("Bearer s3cret-token", 200),
        ("Bearer wrong", 401),
        // alice:pa55, alice:nope
        ("Basic YWxpY2U6cGE1NQ==", 200),
        ("Basic YWxpY2U6bm9wZQ==", 401),
        ("Custom xyz", 200),
        ("custom xyz", 200),
        ("Custom abc", 401),
    ] {
        let (status, body) = get(
            &sim,
            Identity::None,
            "/api/v1/pods",
            &[("authorization", header)],
        )
        .await;
        assert_eq!(status, want, "{header}: {body}");
    }
    let stats = sim.stats();
    assert_eq!((stats.auth_rejections, stats.rejected_tokens), (4, 1));
    // The sink and the simulator's own paths are open.
    assert_eq!(get(&sim, Identity::None, "/sim/stats", &[]).await.0, 200);
    assert_eq!(get(&sim, Identity::None, "/ready", &[]).await.0, 200);

    // A certificate from another CA fails the handshake (or the first request, in TLS 1.3).
    let tcp = TcpStream::connect(sim.local_addr()).await.unwrap();
    let refused = match tls_over(tcp, &sim, Identity::Foreign, &[b"h2"]).await {
        Err(_) => true,
        Ok((tls, _)) => match hyper::client::conn::http2::handshake::<_, _, Body>(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        {
            Err(_) => true,
            Ok((mut sender, conn)) => {
                tokio::spawn(conn);
                sender
                    .send_request(request("GET", "/version", &[], ""))
                    .await
                    .is_err()
            }
        },
    };
    assert!(refused);
    eventually("the refused certificate is counted", || {
        sim.stats().handshake_failures == 1
    })
    .await;

    // Credentials rotate at run time.
    sim.set_auth(Some(AuthOptions {
        bearer_tokens: vec!["new".into()],
        ..Default::default()
    }));
    assert_eq!(
        get(
            &sim,
            Identity::None,
            "/api/v1/pods",
            &[("authorization", "Bearer s3cret-token")]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(
            &sim,
            Identity::None,
            "/api/v1/pods",
            &[("authorization", "Bearer new")]
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn authentication_works_over_plain_http_too() {
    let sim = Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            auth: Some(AuthOptions {
                bearer_tokens: vec!["t".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut sender = h2c(&sim).await;
    assert_eq!(
        send(&mut sender, request("GET", "/api/v1/pods", &[], ""))
            .await
            .0,
        401
    );
    assert_eq!(
        send(
            &mut sender,
            request("GET", "/api/v1/pods", &[("authorization", "Bearer t")], "")
        )
        .await
        .0,
        200
    );
    assert_eq!(sim.rejected_tokens(), 0);
    assert_eq!(sim.auth_rejections(), 1);
}

#[tokio::test]
async fn oauth2_tokens_are_issued_accepted_until_they_expire_and_failures_can_be_scripted() {
    let (sim, _dir) = tls_sim(SimOptions {
        auth: Some(all_auth()),
        ..Default::default()
    })
    .await;
    assert!(sim.token_url().ends_with("/oauth2/token"));
    let mut sender = h2(&sim, Identity::None).await;
    let form = "grant_type=client_credentials&scope=logs%20read&audience=kubernetes";
    let content_type = ("content-type", "application/x-www-form-urlencoded");
    // relay:relay-secret
    let basic = ("authorization", "Basic cmVsYXk6cmVsYXktc2VjcmV0");
    let (status, body) = send(
        &mut sender,
        request("POST", "/oauth2/token", &[content_type, basic], form),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["token_type"].as_str(), answer["expires_in"].as_u64()),
        (Some("Bearer"), Some(1))
    );
    let token = answer["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let (status, _) = send(
        &mut sender,
        request("GET", "/api/v1/pods", &[("authorization", &bearer)], ""),
    )
    .await;
    assert_eq!(status, 200);
    let recorded = &sim.oauth2().requests()[0];
    assert_eq!(recorded.client_id.as_deref(), Some("relay"));
    assert!(recorded.basic_auth);
    assert_eq!(recorded.scope.as_deref(), Some("logs read"));
    assert_eq!(
        recorded.params.get("audience").map(String::as_str),
        Some("kubernetes")
    );

    // Expired after expires_in: refused and counted as a rejected token.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, _) = send(
            &mut sender,
            request("GET", "/api/v1/pods", &[("authorization", &bearer)], ""),
        )
        .await;
        if status == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sim.rejected_tokens() >= 1);

    // Scripted failures, then recovery; form credentials work too.
    sim.oauth2().fail_next(2, 500);
    let with_form = "grant_type=client_credentials&client_id=relay&client_secret=relay-secret";
    let statuses = [
        send(
            &mut sender,
            request("POST", "/oauth2/token", &[content_type], with_form),
        )
        .await
        .0,
        send(
            &mut sender,
            request("POST", "/oauth2/token", &[content_type], with_form),
        )
        .await
        .0,
        send(
            &mut sender,
            request("POST", "/oauth2/token", &[content_type], with_form),
        )
        .await
        .0,
    ];
    assert_eq!(statuses, [500, 500, 200]);
    let wrong = "grant_type=client_credentials&client_id=relay&client_secret=nope";
    assert_eq!(
        send(
            &mut sender,
            request("POST", "/oauth2/token", &[content_type], wrong)
        )
        .await
        .0,
        401
    );
    let stats = sim.stats();
    assert_eq!((stats.token_fetches, stats.tokens_issued), (5, 2));
}

#[tokio::test]
async fn the_proxy_tunnels_to_the_tls_simulator_and_records_the_connect_headers() {
    let (sim, _dir) = tls_sim(SimOptions::default()).await;
    let proxy = kube_log_relay::sim::proxy::Proxy::start().await.unwrap();
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let target = sim.local_addr().to_string();
    tcp.write_all(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Proxy-Token: abc\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let (tls, alpn) = tls_over(tcp, &sim, Identity::None, &[b"h2"]).await.unwrap();
    assert_eq!(alpn, "h2");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        send(&mut sender, request("GET", "/version", &[], ""))
            .await
            .0,
        200
    );
    assert_eq!(proxy.connect_targets(), [target]);
    assert_eq!(proxy.requests()[0].header("x-proxy-token"), Some("abc"));
}

/// kubectl, when it is installed; in CI (`CI=true`) a missing kubectl fails the test.
fn kubectl_available() -> bool {
    crate::support::require_tool(&["kubectl"], "apt-get install kubernetes-client").is_some()
}

#[tokio::test]
async fn kubectl_lists_pods_and_follows_logs_over_tls_with_the_written_kubeconfig() {
    if !kubectl_available() {
        return;
    }
    // Client certificates only: kubectl authenticates with the pair in the kubeconfig.
    let (sim, _dir) = tls_sim(SimOptions {
        auth: Some(AuthOptions {
            client_certs: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    sim.add_pod(
        PodSpec::new("batch", "backup")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(20, 0)),
    );
    let kubeconfig = sim.tls_files().unwrap().kubeconfig.clone();
    let kubectl = |args: Vec<&str>| {
        let kubeconfig = kubeconfig.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = kubectl(vec!["get", "pods", "-A"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("NAME") && stdout.contains("backup"),
        "{stdout}"
    );

    // -f ends by itself: the container exits after its 20 lines.
    let out = kubectl(vec!["logs", "-f", "-n", "batch", "backup", "-c", "c"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, sim.written_lines("batch", "backup", "c"));
    assert_eq!(lines.len(), 20);
    assert_eq!(sim.auth_rejections(), 0);
    assert!(sim.stats().connections_opened >= 1);
}

#[tokio::test]
async fn sim_tls_on_the_command_line_prints_and_writes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-log-relay"))
        .args([
            "sim",
            "--tls",
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent-streams",
            "7",
            "--state-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let read = tokio::time::timeout(DEADLINE, async {
        use tokio::io::AsyncBufReadExt;
        while !printed.contains("kubeconfig ") {
            if stdout.read_line(&mut printed).await.unwrap() == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no kubeconfig path printed in time:\n{printed}"
    );
    let kubeconfig = dir.path().join("kubeconfig");
    for file in ["ca.crt", "client.crt", "client.key", "kubeconfig"] {
        let path = dir.path().join(file);
        assert!(
            printed.contains(&path.display().to_string()),
            "{file} named in:\n{printed}"
        );
        assert!(path.exists(), "{file}");
    }
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    assert!(
        server.starts_with("https://127.0.0.1:") && printed.contains(&server),
        "{server}\n{printed}"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The relay as it is today reaches the TLS simulator with nothing but the kubeconfig it wrote
/// (CA and client certificate embedded), through an API that refuses anonymous requests.
#[actix_rt::test]
async fn the_relay_tails_through_the_written_kubeconfig() {
    let (sim, _dir) = tls_sim(SimOptions {
        auth: Some(AuthOptions {
            client_certs: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    sim.add_pod(
        PodSpec::new("batch", "job")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(200.0).total_lines(100, 0)),
    );
    let sink = crate::support::sink().await;
    let kubeconfig = sim.tls_files().unwrap().kubeconfig.display().to_string();
    let config = format!(
        r#"
[kubernetes]
kubeconfig_file = "{kubeconfig}"

[tail]
min_backoff = "50ms"
max_backoff = "500ms"
terminated_grace = "1s"

[server]
listen = "127.0.0.1:0"
"#
    ) + &crate::support::loki_table("a", &sink, "");
    let relay = crate::support::relay(&config).await;
    crate::support::all_finished(&relay, 1).await;
    relay.shutdown().await;
    assert_eq!(
        crate::support::lines_of(&sink.entries(), "batch", "job", "c"),
        sim.written_lines("batch", "job", "c")
    );
    let stats = sim.stats();
    assert_eq!((stats.auth_rejections, stats.handshake_failures), (0, 0));
    assert!(
        stats.connections_opened >= 1 && stats.streams_total >= 2,
        "{stats:?}"
    );
}

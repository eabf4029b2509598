//! `oauth2` for the Kubernetes client and the receivers (SPEC §4.1, §4.5; issue 16) against the
//! TLS simulator's token endpoint: one token serves every request, tokens are refreshed before
//! they expire, a failing endpoint is backed off with a clear error and then recovers, a
//! receiver pushes with its own token, and `check` accepts and refuses `oauth2` tables.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube_log_relay::sim::loki::LokiSink;
use kube_log_relay::sim::oauth::TokenCheck;
use kube_log_relay::sim::{
    AuthOptions, ContainerSpec, OAuth2Options, PodSpec, RestartPolicy, Sim, SimOptions,
};

use crate::support::{self, Metrics, RelayProcess, eventually, eventually_async};

const CLIENT_ID: &str = "relay";
const SECRET: &str = "s3cret";

/// A TLS simulator whose API accepts only tokens of its OAuth2 endpoint, issued for
/// `expires_in`.
async fn oauth_sim(expires_in: Duration) -> (Sim, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            tls: true,
            auth: Some(AuthOptions {
                oauth2: Some(OAuth2Options {
                    client_id: CLIENT_ID.into(),
                    client_secret: SECRET.into(),
                    expires_in,
                }),
                ..Default::default()
            }),
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .expect("simulator starts");
    (sim, dir)
}

fn ca(sim: &Sim) -> String {
    sim.tls_files().expect("TLS files").ca.display().to_string()
}

/// `[kubernetes]` with `[kubernetes.oauth2]` against the simulator (scope `k8s`), fast tail
/// backoffs, and the `[server]` of every test relay.
fn kubernetes_oauth2(sim: &Sim) -> String {
    format!(
        r#"
[kubernetes]
api_server = "{url}"
qps = 1000
burst = 1000

[kubernetes.tls_config]
ca_file = "{ca}"

[kubernetes.oauth2]
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
token_url = "{token_url}"
scopes = ["k8s"]

[kubernetes.oauth2.tls_config]
ca_file = "{ca}"

[tail]
min_backoff = "50ms"
max_backoff = "500ms"
terminated_grace = "1s"

[server]
listen = "127.0.0.1:0"
"#,
        url = sim.url(),
        ca = ca(sim),
        token_url = sim.token_url(),
    )
}

/// `n` pods of one container `c` writing `lines` lines at 20 a second, then exiting.
fn add_jobs(sim: &Sim, n: usize, containers: &[&str], lines: u64) {
    for p in 0..n {
        let mut pod = PodSpec::new("jobs", format!("p-{p}")).restart_policy(RestartPolicy::Never);
        for c in containers {
            pod = pod.container(ContainerSpec::new(*c).rate(20.0).total_lines(lines, 0));
        }
        sim.add_pod(pod);
    }
}

/// Every line the `n` pods of [`add_jobs`] wrote reached `sink` exactly once.
fn assert_every_line_once(sim: &Sim, n: usize, containers: &[&str], sink: &LokiSink) {
    let entries = sink.entries();
    for p in 0..n {
        let pod = format!("p-{p}");
        for c in containers {
            support::assert_exactly_once(
                &format!("jobs/{pod}/{c}"),
                &sim.written_lines("jobs", &pod, c),
                &support::lines_of(&entries, "jobs", &pod, c),
            );
        }
    }
}

/// A Loki that takes a push only with a bearer token the simulator's endpoint issued and that
/// has not expired (401 otherwise), in front of a sink.
struct TokenLoki {
    sink: LokiSink,
    url: String,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

async fn token_loki(sim: &Sim) -> TokenLoki {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let sink = LokiSink::new();
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (sim, ok, no) = (sim.clone(), accepted.clone(), refused.clone());
    let router = sink.router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (sim, ok, no) = (sim.clone(), ok.clone(), no.clone());
            async move {
                let token = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned);
                let valid = token.is_some_and(|t| {
                    sim.oauth2().accepts(&t, std::time::Instant::now()) == TokenCheck::Valid
                });
                if valid {
                    ok.fetch_add(1, Ordering::Relaxed);
                    next.run(request).await
                } else {
                    no.fetch_add(1, Ordering::Relaxed);
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/loki/api/v1/push",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    TokenLoki {
        sink,
        url,
        accepted,
        refused,
    }
}

#[actix_rt::test]
async fn one_token_serves_every_request_and_the_receiver_pushes_with_its_own() {
    let (sim, dir) = oauth_sim(Duration::from_secs(3600)).await;
    add_jobs(&sim, 3, &["a", "b"], 30);
    let loki = token_loki(&sim).await;
    let secret = dir.path().join("loki-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret");
    let text = kubernetes_oauth2(&sim)
        + &format!(
            r#"
[loki.a]
url = "{url}"
batch_wait = "100ms"
min_backoff = "100ms"
max_backoff = "1s"

[loki.a.oauth2]
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
token_url = "{token_url}"
scopes = ["logs.write"]
endpoint_params = {{ audience = "loki" }}

[loki.a.oauth2.tls_config]
ca_file = "{ca}"
"#,
            url = loki.url,
            secret = secret.display(),
            token_url = sim.token_url(),
            ca = ca(&sim),
        );
    let relay = support::relay(&text).await;
    support::all_finished(&relay, 6).await;
    eventually("every line at the sink", || {
        loki.sink.entries().len() == 6 * 30
    })
    .await;
    relay.shutdown().await;
    assert_every_line_once(&sim, 3, &["a", "b"], &loki.sink);

    // Six streams, their pod GETs, the pod list and watch: one token for all of them, and one
    // for the receiver's pushes.
    let mut requests = sim.oauth2().requests();
    requests.sort_by(|a, b| a.scope.cmp(&b.scope));
    assert_eq!(sim.oauth2().fetches(), 2, "{requests:#?}");
    let scopes: Vec<_> = requests.iter().map(|r| r.scope.as_deref()).collect();
    assert_eq!(scopes, [Some("k8s"), Some("logs.write")]);
    for r in &requests {
        assert!(r.basic_auth, "client credentials by basic auth: {r:?}");
        assert_eq!(r.client_id.as_deref(), Some(CLIENT_ID));
        assert_eq!(r.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(requests[0].params, BTreeMap::new());
    assert_eq!(
        requests[1].params,
        BTreeMap::from([("audience".into(), "loki".into())])
    );
    assert_eq!(sim.auth_rejections(), 0);
    assert_eq!(loki.refused.load(Ordering::Relaxed), 0);
    assert!(loki.accepted.load(Ordering::Relaxed) >= 1);
}

#[actix_rt::test]
async fn tokens_are_refreshed_before_they_expire_and_no_request_is_refused() {
    let (sim, _dir) = oauth_sim(Duration::from_secs(2)).await;
    // Two containers writing for 8 s, their streams cut every 50 lines (a reconnect re-reads
    // the cursor's 2 s reorder window, 40 lines, so each makes progress): a new log request
    // about every half second each, over four token lifetimes.
    add_jobs(&sim, 2, &["a"], 160);
    sim.set_cut_every(Some(50));
    let sink = support::sink().await;
    let started = Instant::now();
    let relay =
        support::relay(&(kubernetes_oauth2(&sim) + &support::loki_table("a", &sink, ""))).await;
    support::all_finished(&relay, 2).await;
    eventually("every line at the sink", || sink.entries().len() >= 320).await;
    let elapsed = started.elapsed();
    relay.shutdown().await;
    assert_every_line_once(&sim, 2, &["a"], &sink);
    let fetches = sim.oauth2().fetches();
    assert!(fetches >= 3, "refreshed while lines flowed: {fetches}");
    // One fetch per second of token life (2 s, refreshed 1 s early), not one per request.
    let most = elapsed.as_secs_f64().ceil() as u64 + 1;
    assert!(fetches <= most, "{fetches} fetches in {elapsed:?}");
    let opens = sim.log_opens("jobs", "p-0", "a");
    assert!(
        opens >= 4,
        "streams reopened across token lifetimes: {opens}"
    );
    assert_eq!(sim.rejected_tokens(), 0, "an expired token reached the API");
    assert_eq!(sim.auth_rejections(), 0);
}

#[actix_rt::test]
async fn a_failing_token_endpoint_is_backed_off_named_in_the_log_and_recovered_from() {
    let (sim, dir) = oauth_sim(Duration::from_secs(3600)).await;
    add_jobs(&sim, 1, &["a"], 20);
    sim.oauth2().fail(500);
    let sink = support::sink().await;
    let text = kubernetes_oauth2(&sim) + &support::loki_table("a", &sink, "");
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    let addr = relay.http_addr().await;
    eventually("a first failed token request", || {
        relay.alive() && sim.oauth2().fetches() >= 1
    })
    .await;
    let first = Instant::now();
    eventually("three failed token requests", || {
        relay.alive() && sim.oauth2().fetches() >= 3
    })
    .await;
    // Backoff: 0.5 s then 1 s (±20 %) between them, and the next one 2 s later — whatever
    // the discovery and the tailer retried meanwhile.
    assert!(
        first.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        first.elapsed()
    );
    assert_eq!(sim.oauth2().fetches(), 3);
    let log = relay.log();
    assert!(log.contains("cannot get an OAuth2 token"), "{log}");
    let named = format!(
        "kubernetes.oauth2.token_url: POST {}: HTTP 500: server_error: scripted failure",
        sim.token_url()
    );
    assert!(log.contains(&named), "{named:?} in:\n{log}");
    assert!(log.contains("next attempt in"), "{log}");
    // The third failure is counted once its answer was read, a moment after the sim saw it.
    let errors = |m: &Metrics| {
        m.series(
            "kube_log_relay_oauth2_token_errors_total",
            &[("client", "kubernetes")],
        )
    };
    eventually_async("three token errors counted", || async move {
        errors(&Metrics::scrape(addr).await) >= 3.0
    })
    .await;
    let metrics = Metrics::scrape(addr).await;
    assert_eq!(errors(&metrics), 3.0, "{}", metrics.text());
    assert!(sink.entries().is_empty());

    sim.oauth2().recover();
    eventually("every line after the endpoint recovered", || {
        relay.alive() && sink.entries().len() == 20
    })
    .await;
    assert_every_line_once(&sim, 1, &["a"], &sink);
    assert_eq!(sim.rejected_tokens(), 0);
    relay.terminate().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_kube-log-relay");

fn check(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).expect("write the configuration");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_full_oauth2_tables_and_refuses_bad_ones_with_their_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = r#"
[kubernetes]
api_server = "https://k8s:6443"
[kubernetes.oauth2]
client_id = "relay"
client_secret_file = "/etc/relay/secret"
token_url = "https://idp.example.com/oauth2/token"
scopes = ["a", "b"]
endpoint_params = { audience = "k8s" }
proxy_url = "http://proxy:3128"
no_proxy = "idp.internal"
proxy_connect_header = { "X-Proxy" = ["x"] }
[kubernetes.oauth2.tls_config]
ca_file = "/etc/relay/idp-ca.crt"
min_version = "TLS13"
[loki.a]
url = "https://loki/loki/api/v1/push"
[loki.a.oauth2]
client_id = "relay"
client_secret = "s"
token_url = "http://idp/token"
proxy_from_environment = true
"#;
    let (code, stderr) = check(dir.path(), full);
    assert_eq!(code, Some(0), "{stderr}");

    let bad = r#"
[kubernetes.oauth2]
client_secret = "s"
token_url = "idp/token"
scopes = ["a b"]
[loki.a]
url = "https://loki/loki/api/v1/push"
bearer_token = "t"
[loki.a.oauth2]
client_id = "relay"
token_url = "https://idp/token"
endpoint_params = { client_id = "x" }
"#;
    let (code, stderr) = check(dir.path(), bad);
    assert_eq!(code, Some(1), "{stderr}");
    for path in [
        "kubernetes.oauth2.client_id: missing (required)",
        "kubernetes.oauth2.token_url: \"idp/token\" is not an http:// or https:// URL",
        "kubernetes.oauth2.scopes[0]:",
        "loki.a: at most one of",
        "loki.a.oauth2: one of client_secret, client_secret_file is required",
        "loki.a.oauth2.endpoint_params.client_id:",
    ] {
        assert!(stderr.contains(path), "{path:?} in:\n{stderr}");
    }
}

/// A relay whose `[kubernetes]` reaches the simulator directly while its `[kubernetes.oauth2]`
/// table is `oauth2` (the token endpoint, its secret and TLS, its own proxy options).
fn relay_with_oauth2(sim: &Sim, sink: &LokiSink, oauth2: &str) -> String {
    format!(
        "[kubernetes]\napi_server = \"{url}\"\nqps = 1000\nburst = 1000\n\
         [kubernetes.tls_config]\nca_file = \"{ca}\"\n\
         [kubernetes.oauth2]\nclient_id = \"{CLIENT_ID}\"\ntoken_url = \"{token_url}\"\n{oauth2}\n\
         [tail]\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\nterminated_grace = \"1s\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n",
        url = sim.url(),
        ca = ca(sim),
        token_url = sim.token_url(),
    ) + &support::loki_table("a", sink, "")
}

/// Waits until the 20 lines of `jobs/p-0/c` reached `sink`.
async fn twenty_arrive(sink: &LokiSink) {
    eventually("jobs/p-0/c: 20 lines", || {
        support::lines_of(&sink.entries(), "jobs", "p-0", "c").len() >= 20
    })
    .await;
}

#[actix_rt::test]
async fn the_token_endpoint_has_its_own_secret_file_params_tls_and_proxy() {
    let (sim, dir) = oauth_sim(Duration::from_secs(600)).await;
    let files = sim.tls_files().expect("TLS files").clone();
    let secret = dir.path().join("oauth2-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret");
    let pem = std::fs::read_to_string(&files.ca).expect("read the CA");
    let proxy = kube_log_relay::sim::proxy::Proxy::start()
        .await
        .expect("proxy starts");
    let target = sim.url().trim_start_matches("https://").to_string();

    // Through its own CONNECT proxy, an inline CA checked against another name, TLS 1.3 only,
    // extra form parameters, the secret in a file.
    add_jobs(&sim, 1, &["c"], 20);
    let sink = support::sink().await;
    let oauth2 = format!(
        "client_secret_file = \"{}\"\nscopes = [\"k8s\", \"logs\"]\n\
         endpoint_params = {{ audience = \"kubernetes\" }}\n\
         proxy_url = \"{}\"\nproxy_connect_header = {{ \"X-Token-Proxy\" = [\"yes\"] }}\n\
         [kubernetes.oauth2.tls_config]\nca_pem = '''\n{pem}'''\nserver_name = \"localhost\"\nmin_version = \"TLS13\"\n",
        secret.display(),
        proxy.url()
    );
    let relay = support::relay(&relay_with_oauth2(&sim, &sink, &oauth2)).await;
    twenty_arrive(&sink).await;
    assert_every_line_once(&sim, 1, &["c"], &sink);
    relay.shutdown().await;
    let requests = sim.oauth2().requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.scope.as_deref(), Some("k8s logs"), "{r:?}");
        assert_eq!(
            r.params.get("audience").map(String::as_str),
            Some("kubernetes"),
            "{r:?}"
        );
    }
    let through = proxy.requests();
    assert!(
        !through.is_empty()
            && through
                .iter()
                .all(|r| r.target == target && r.header("x-token-proxy") == Some("yes")),
        "only the token requests go through the oauth2 proxy: {through:?}"
    );

    // no_proxy keeps it direct; insecure_skip_verify with a client certificate from files.
    let proxy = kube_log_relay::sim::proxy::Proxy::start()
        .await
        .expect("proxy starts");
    let (sim2, _dir2) = oauth_sim(Duration::from_secs(600)).await;
    let files = sim2.tls_files().expect("TLS files").clone();
    add_jobs(&sim2, 1, &["c"], 20);
    let sink = support::sink().await;
    let oauth2 = format!(
        "client_secret = \"{SECRET}\"\nproxy_url = \"{}\"\nno_proxy = \"127.0.0.0/8\"\n\
         [kubernetes.oauth2.tls_config]\ninsecure_skip_verify = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
",
        proxy.url(),
        files.client_cert.display(),
        files.client_key.display()
    );
    let relay = support::relay(&relay_with_oauth2(&sim2, &sink, &oauth2)).await;
    twenty_arrive(&sink).await;
    assert_every_line_once(&sim2, 1, &["c"], &sink);
    relay.shutdown().await;
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());

    // proxy_from_environment: HTTPS_PROXY for the token endpoint only (a child process: the
    // environment is the process's).
    let proxy = kube_log_relay::sim::proxy::Proxy::start()
        .await
        .expect("proxy starts");
    let (sim3, dir3) = oauth_sim(Duration::from_secs(600)).await;
    add_jobs(&sim3, 1, &["c"], 20);
    let sink = support::sink().await;
    let ca_file = sim3
        .tls_files()
        .expect("TLS files")
        .ca
        .display()
        .to_string();
    let oauth2 = format!(
        "client_secret = \"{SECRET}\"\nproxy_from_environment = true\n\
         [kubernetes.oauth2.tls_config]\nca_file = \"{ca_file}\"\ncert_pem = '''\n{}'''\nkey_pem = '''\n{}'''\n",
        std::fs::read_to_string(&sim3.tls_files().expect("files").client_cert).expect("cert"),
        std::fs::read_to_string(&sim3.tls_files().expect("files").client_key).expect("key"),
    );
    let text = relay_with_oauth2(&sim3, &sink, &oauth2);
    let mut relay = RelayProcess::start_with_env(
        dir3.path(),
        &text,
        0,
        &[("HTTPS_PROXY", proxy.url().as_str()), ("NO_PROXY", "")],
    );
    let target3 = sim3.url().trim_start_matches("https://").to_string();
    eventually("the token request goes through HTTPS_PROXY", || {
        relay.alive() && proxy.connect_targets().contains(&target3)
    })
    .await;
    twenty_arrive(&sink).await;
    assert!(relay.alive());
    assert_every_line_once(&sim3, 1, &["c"], &sink);
    relay.terminate().await;
}

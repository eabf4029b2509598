//! `kube-log-relay demo` (SPEC §8.6): the simulator and the real relay in one process.
//!
//! Starts the simulator with a few scripted pods (one restarting, one Job, one bursting), runs the
//! relay against it over loopback with the simulator's Loki sink and a `[stdout]` receiver, serves
//! the HTTP endpoints and stops cleanly on Ctrl-C.

use crate::app::Relay;
use crate::config;
use crate::sim::{self, Sim};

/// Runs the demo until Ctrl-C; `listen` is where the relay's endpoints are served.
pub async fn run(listen: &str) -> anyhow::Result<()> {
    let sim = Sim::start("127.0.0.1:0").await?;
    for pod in sim::demo_pods() {
        sim.add_pod(pod);
    }
    let text = demo_config(&sim.url(), listen);
    let config =
        config::parse(&text, &|_| None).map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let relay = Relay::start(config).await?;
    let http = relay.http_addr();
    eprintln!(
        "\nkube-log-relay demo\n  simulated API server  {api}\n  try: kubectl --server {api} get pods -A\n  relay metrics         http://{http}/metrics\n  relay targets         http://{http}/api/v1/targets\n  Ctrl-C stops it.\n",
        api = sim.url(),
    );
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    eprintln!(
        "demo: the Loki sink received {} entries",
        sim.sink().entries().len()
    );
    Ok(())
}

/// The relay configuration the demo runs: the simulator's API server and sink, plus stdout.
pub fn demo_config(api: &str, listen: &str) -> String {
    format!(
        r#"
[kubernetes]
api_server = "{api}"

[loki.sim]
url = "{api}/loki/api/v1/push"
batch_wait = "500ms"

[stdout]
format = "logfmt"

[tail]
min_backoff = "200ms"
terminated_grace = "2s"

[server]
listen = "{listen}"
"#
    )
}

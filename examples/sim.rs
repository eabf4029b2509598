//! Runs the simulator (SPEC §8.5) for manual checks with kubectl:
//! `cargo run --example sim -- [LISTEN] [SCENARIO]`, then
//! `kubectl --server http://LISTEN get pods -A`.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:6443".to_string());
    let scenario = args.next().map(PathBuf::from);
    kube_log_relay::sim::run(&listen, scenario.as_deref()).await
}

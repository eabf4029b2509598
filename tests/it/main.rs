//! Integration tests: the relay against the simulator over real sockets (one test binary, see
//! STYLE.md). Every test counts lines at the receiving end.

mod api_pool;
mod browser;
mod cli;
mod cluster;
mod config_bounds;
mod config_examples;
mod deploy;
mod kube_keys;
mod lifecycle;
mod oauth2;
mod pipeline;
mod positions;
mod receivers;
mod reload;
mod server;
mod sim_tls;
mod support;
mod tail_faults;
mod tail_scale;

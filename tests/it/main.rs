//! Integration tests: the relay against the simulator over real sockets (one test binary, see
//! STYLE.md). Every test counts lines at the receiving end.

mod browser;
mod cli;
mod cluster;
mod lifecycle;
mod pipeline;
mod positions;
mod receivers;
mod reload;
mod server;
mod sim_tls;
mod support;

//! The simulator's connection table (SPEC §8.5, §10): every accepted connection with its
//! protocol and the requests (HTTP/2 streams) open on it, so tests and the benchmark can check
//! how the relay pools its connections, and a kill switch per connection to test that only the
//! streams of a dead connection reopen.
//!
//! A request counts as open from its head until its response body ends or is dropped (a follow
//! is open for as long as it streams).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// One connection as the stats show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionStats {
    /// Numbered from 1 in accept order.
    pub id: u64,
    /// `"h2"` or `"http/1.1"` (by ALPN over TLS; by the first request over plain HTTP), `""`
    /// before the first request.
    pub protocol: String,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether the client presented a certificate signed by the simulator's CA.
    pub client_cert: bool,
    /// Requests (streams) open now.
    pub open_streams: u64,
    /// Requests since the connection opened.
    pub total_streams: u64,
    /// The most requests that were open at once.
    pub max_streams: u64,
}

/// Live connections and the counters over all of them.
#[derive(Default)]
pub struct Connections {
    live: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    opened: AtomicU64,
    streams_total: AtomicU64,
    max_streams_on_one: AtomicU64,
    handshake_failures: AtomicU64,
}

/// One accepted connection.
pub struct Connection {
    id: u64,
    tls: bool,
    client_cert: bool,
    protocol: Mutex<&'static str>,
    open: AtomicU64,
    total: AtomicU64,
    max: AtomicU64,
    kill: CancellationToken,
}

impl Connection {
    /// The connection's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the client presented a certificate signed by the simulator's CA.
    pub fn client_cert(&self) -> bool {
        self.client_cert
    }

    /// Cancelled when the connection is to be killed.
    pub fn killed(&self) -> &CancellationToken {
        &self.kill
    }

    /// Records the protocol of the first request on a plain connection.
    pub fn set_protocol_if_unknown(&self, protocol: &'static str) {
        let mut p = self.protocol.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            *p = protocol;
        }
    }

    fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            id: self.id,
            protocol: self
                .protocol
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .to_string(),
            tls: self.tls,
            client_cert: self.client_cert,
            open_streams: self.open.load(Ordering::Relaxed),
            total_streams: self.total.load(Ordering::Relaxed),
            max_streams: self.max.load(Ordering::Relaxed),
        }
    }
}

/// Held while a request is open; dropping it closes the stream in the counts.
pub struct StreamGuard {
    connection: Arc<Connection>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.connection.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    /// Registers a new connection; `protocol` is known up front over TLS (ALPN).
    pub fn open(
        &self,
        tls: bool,
        client_cert: bool,
        protocol: Option<&'static str>,
    ) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            tls,
            client_cert,
            protocol: Mutex::new(protocol.unwrap_or("")),
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            max: AtomicU64::new(0),
            kill: CancellationToken::new(),
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, connection.clone());
        connection
    }

    /// Forgets a connection that ended.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Counts a request opened on `connection`.
    pub fn stream_started(&self, connection: &Arc<Connection>) -> StreamGuard {
        let now = connection.open.fetch_add(1, Ordering::Relaxed) + 1;
        connection.total.fetch_add(1, Ordering::Relaxed);
        connection.max.fetch_max(now, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        self.max_streams_on_one.fetch_max(now, Ordering::Relaxed);
        StreamGuard {
            connection: connection.clone(),
        }
    }

    /// Counts a TLS handshake that failed (the connection is not in the table).
    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes that failed: a client that does not trust the CA, an untrusted client
    /// certificate, a handshake that timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (over TLS: handshakes completed).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_count(&self) -> u64 {
        self.lock().len() as u64
    }

    /// Requests since start, on every connection.
    pub fn streams_total(&self) -> u64 {
        self.streams_total.load(Ordering::Relaxed)
    }

    /// The most requests ever open at once on one connection.
    pub fn max_streams_on_one(&self) -> u64 {
        self.max_streams_on_one.load(Ordering::Relaxed)
    }

    /// Every open connection, by id.
    pub fn list(&self) -> Vec<ConnectionStats> {
        self.lock().values().map(|c| c.stats()).collect()
    }

    /// Closes connection `id` at once (its TCP socket, no GOAWAY), like a dying peer; false
    /// when there is no such open connection.
    pub fn kill(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(c) => {
                c.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// Kills the connection with the most open requests (the oldest among equals); returns
    /// it as it was, or `None` when no connection is open.
    pub fn kill_busiest(&self) -> Option<ConnectionStats> {
        let busiest = self
            .lock()
            .values()
            .map(|c| c.stats())
            .max_by_key(|s| (s.open_streams, std::cmp::Reverse(s.id)))?;
        self.kill(busiest.id);
        Some(busiest)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_connection_and_the_busiest_is_killed() {
        let conns = Connections::default();
        let a = conns.open(true, false, Some("h2"));
        let b = conns.open(false, false, None);
        let a1 = conns.stream_started(&a);
        let a2 = conns.stream_started(&a);
        let b1 = conns.stream_started(&b);
        b.set_protocol_if_unknown("http/1.1");
        b.set_protocol_if_unknown("h2");
        drop(a1);
        let a3 = conns.stream_started(&a);
        assert_eq!(conns.streams_total(), 4);
        assert_eq!(conns.max_streams_on_one(), 2);
        let list = conns.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (
                list[0].open_streams,
                list[0].total_streams,
                list[0].max_streams
            ),
            (2, 3, 2)
        );
        assert_eq!(list[1].protocol, "http/1.1");
        let killed = conns.kill_busiest().unwrap();
        assert_eq!(killed.id, a.id());
        assert!(a.killed().is_cancelled() && !b.killed().is_cancelled());
        drop((a2, a3, b1));
        conns.close(a.id());
        assert_eq!(conns.open_count(), 1);
        assert_eq!(conns.opened(), 2);
        assert!(!conns.kill(a.id()));
    }
}

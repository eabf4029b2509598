//! Clustering (SPEC §7): positions in ConfigMaps shared by replicas, Leases, ownership and
//! hand-over. Relays run as child processes against one simulator and one Loki sink, which see
//! everything every replica sent.

use std::sync::Arc;

use kube_log_relay::cluster::identity::Identity;
use kube_log_relay::cursor::{Cursor, Position};
use kube_log_relay::positions::PositionsTable;
use kube_log_relay::positions::kubernetes::KubeStore;
use kube_log_relay::positions::sync::Backend;
use kube_log_relay::target::TargetId;

use crate::support;

/// The namespace of the test relays' Leases and ConfigMaps.
const NAMESPACE: &str = "relay";

fn target(pod: &str) -> TargetId {
    TargetId {
        namespace: "ns".into(),
        pod: pod.into(),
        container: "c".into(),
        uid: format!("uid-{pod}"),
    }
}

fn position(since: i64) -> Position {
    Position {
        container_id: Some("containerd://x".into()),
        cursor: Cursor { since, skip: 1 },
    }
}

/// Two writers of one replica's ConfigMap (same identity: a misconfiguration, or a pod that
/// restarts while its predecessor still writes), through the positions sync: each conflict is
/// re-read and retried, and neither writer's cursors are lost, at any time.
#[actix_rt::test]
async fn two_writers_of_one_config_map_lose_no_cursor() {
    let sim = support::sim().await;
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
    let identity = Identity {
        name: "relay-0".into(),
        namespace: NAMESPACE.into(),
    };
    let store = |client| Backend::Kubernetes(Arc::new(KubeStore::new(client, identity.clone())));
    let (a, b) = (store(client.clone()), store(client.clone()));
    let (ta, tb) = (PositionsTable::default(), PositionsTable::default());
    let reader = KubeStore::new(client, identity.clone());
    for round in 0..20 {
        ta.update(&target("a1"), position(100 + round));
        ta.update(&target("a2"), position(100 + round));
        tb.update(&target("b1"), position(200 + round));
        // One after the other on even rounds, at once on odd ones.
        if round % 2 == 0 {
            a.sync(&ta).await;
            b.sync(&tb).await;
        } else {
            tokio::join!(a.sync(&ta), b.sync(&tb));
        }
        let stored = reader.load().await.unwrap().positions;
        let since = |pod: &str| stored.get(&target(pod)).map(|s| s.position.cursor.since);
        assert_eq!(
            (since("a1"), since("a2"), since("b1")),
            (Some(100 + round), Some(100 + round), Some(200 + round)),
            "round {round}: {stored:?}"
        );
    }
    assert_eq!(sim.config_maps(NAMESPACE).len(), 1);
}

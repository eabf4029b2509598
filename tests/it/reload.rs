//! Reload (SPEC §8.1): only the difference is applied, nothing is lost or repeated, and an
//! invalid file changes nothing.

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim};

use crate::support::{
    self, Metrics, RelayProcess, all_finished, assert_exactly_once, eventually, lines_of,
};

fn steady_pods(sim: &Sim, n: usize) {
    for p in 0..n {
        sim.add_pod(
            PodSpec::new("ns", format!("p-{p}"))
                .restart_policy(RestartPolicy::OnFailure)
                .container(ContainerSpec::new("c").rate(50.0).same_timestamp_run(4)),
        );
    }
}

/// Ends every container for good and waits until the relay read everything.
async fn finish(sim: &Sim, relay: &kube_log_relay::app::Relay, n: usize) {
    for p in 0..n {
        sim.exit_container("ns", &format!("p-{p}"), "c", 0);
    }
    all_finished(relay, n).await;
}

#[actix_rt::test]
async fn a_reload_that_leaves_the_targets_alone_reopens_nothing_and_loses_nothing() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    steady_pods(&sim, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = support::base_config(&sim) + &support::loki_table("a", &sink, "");
    let relay = support::relay_from_file(&path, &text).await;
    eventually("lines flow", || sink.entries().len() >= 50).await;
    let opens: Vec<u64> = (0..2)
        .map(|p| sim.log_opens("ns", &format!("p-{p}"), "c"))
        .collect();

    // A change that touches no target: the shutdown timeout.
    std::fs::write(&path, text.clone() + "\n[shutdown]\ntimeout = \"20s\"\n").unwrap();
    let (status, body) = support::http_post(relay.http_addr(), "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[shutdown]"), "{body}");
    let seen = sink.entries().len();
    eventually("lines keep flowing", || sink.entries().len() >= seen + 50).await;
    let after: Vec<u64> = (0..2)
        .map(|p| sim.log_opens("ns", &format!("p-{p}"), "c"))
        .collect();
    assert_eq!(after, opens, "no stream was reopened by the reload");

    finish(&sim, &relay, 2).await;
    relay.shutdown().await;
    let entries = sink.entries();
    for p in 0..2 {
        let pod = format!("p-{p}");
        assert_exactly_once(
            &pod,
            &sim.written_lines("ns", &pod, "c"),
            &lines_of(&entries, "ns", &pod, "c"),
        );
    }
}

#[actix_rt::test]
async fn an_invalid_file_is_refused_and_the_relay_keeps_delivering() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    steady_pods(&sim, 1);
    let dir = tempfile::tempdir().unwrap();
    let text = support::base_config(&sim) + &support::loki_table("a", &sink, "");
    // A process of its own: the reload gauge is process-wide, and other relays of this test
    // process load configurations too.
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    let path = relay.config_path();
    let addr = relay.http_addr().await;
    let reload_successful = || async {
        Metrics::scrape(addr)
            .await
            .series("kube_log_relay_config_last_reload_successful", &[])
    };
    eventually("lines flow", || sink.entries().len() >= 20).await;
    assert_eq!(reload_successful().await, 1.0);

    std::fs::write(
        &path,
        text.replace("batch_wait = \"100ms\"", "batch_wait = \"5 parsecs\""),
    )
    .unwrap();
    let (status, body) = support::http_post(addr, "/-/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("loki.a.batch_wait") && body.contains("5 parsecs"),
        "{body}"
    );
    assert_eq!(reload_successful().await, 0.0);
    let seen = sink.entries().len();
    eventually("still delivering with the old configuration", || {
        sink.entries().len() >= seen + 20
    })
    .await;

    std::fs::write(&path, &text).unwrap();
    let (status, body) = support::http_post(addr, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reload_successful().await, 1.0);

    sim.exit_container("ns", "p-0", "c", 0);
    let written = sim.written_lines("ns", "p-0", "c");
    eventually("every line of p-0 arrives", || {
        relay.alive() && lines_of(&sink.entries(), "ns", "p-0", "c").len() >= written.len()
    })
    .await;
    relay.terminate().await;
    assert_exactly_once(
        "p-0",
        &written,
        &lines_of(&sink.entries(), "ns", "p-0", "c"),
    );
}

#[actix_rt::test]
async fn a_reload_adds_removes_and_rebuilds_receivers_without_loss() {
    let sim = support::sim().await;
    let (kept, changed, removed, added) = (
        support::sink().await,
        support::sink().await,
        support::sink().await,
        support::sink().await,
    );
    steady_pods(&sim, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let base = support::base_config(&sim);
    let before = base.clone()
        + &support::loki_table("kept", &kept, "")
        + &support::loki_table("changed", &changed, "")
        + &support::loki_table("removed", &removed, "");
    let relay = support::relay_from_file(&path, &before).await;
    eventually("every receiver gets lines", || {
        [&kept, &changed, &removed]
            .iter()
            .all(|s| s.entries().len() >= 30)
    })
    .await;

    let after = base
        + &support::loki_table("kept", &kept, "")
        + &support::loki_table("changed", &changed, "batch_size = \"64KiB\"")
        + &support::loki_table("added", &added, "");
    std::fs::write(&path, &after).unwrap();
    let (status, body) = support::http_post(relay.http_addr(), "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    // Every line written from now on is read after the new receivers are in place.
    let boundary: Vec<usize> = (0..2)
        .map(|p| sim.written_count("ns", &format!("p-{p}"), "c") as usize)
        .collect();
    eventually("the new receiver gets lines", || {
        added.entries().len() >= 30
    })
    .await;

    finish(&sim, &relay, 2).await;
    relay.shutdown().await;
    for p in 0..2 {
        let pod = format!("p-{p}");
        let written = sim.written_lines("ns", &pod, "c");
        assert_exactly_once(
            &format!("kept {pod}"),
            &written,
            &lines_of(&kept.entries(), "ns", &pod, "c"),
        );
        assert_exactly_once(
            &format!("changed {pod}"),
            &written,
            &lines_of(&changed.entries(), "ns", &pod, "c"),
        );
        let new_lines = &written[boundary[p]..];
        let got = lines_of(&added.entries(), "ns", &pod, "c");
        let tail: Vec<String> = got
            .iter()
            .filter(|l| new_lines.contains(l))
            .cloned()
            .collect();
        assert_exactly_once(
            &format!("added {pod} (lines written after the reload)"),
            new_lines,
            &tail,
        );
    }
    let removed_count = removed.entries().len();
    assert!(
        removed_count > 0 && removed_count < kept.entries().len(),
        "the removed receiver stopped receiving"
    );
}

#[actix_rt::test]
async fn sighup_reloads_the_file_the_relay_runs_on() {
    let sim = support::sim().await;
    let (first, second) = (support::sink().await, support::sink().await);
    steady_pods(&sim, 1);
    let dir = tempfile::tempdir().unwrap();
    let base = support::base_config(&sim);
    let mut relay = support::RelayProcess::start(
        dir.path(),
        &(base.clone() + &support::loki_table("first", &first, "")),
        0,
    );
    eventually("the first receiver gets lines", || {
        relay.alive() && first.entries().len() >= 20
    })
    .await;

    // Swap the receiver and signal: lines written from then on go to the second one.
    let text = base + &support::loki_table("second", &second, "");
    std::fs::write(dir.path().join("relay.toml"), text).unwrap();
    relay.signal("HUP");
    eventually("the second receiver gets lines", || {
        relay.alive() && second.entries().len() >= 20
    })
    .await;
    assert!(
        relay.log().contains("configuration reloaded"),
        "{}",
        relay.log()
    );

    sim.exit_container("ns", "p-0", "c", 0);
    let written = sim.written_lines("ns", "p-0", "c");
    eventually("every line reached one receiver or the other", || {
        let mut all = lines_of(&first.entries(), "ns", "p-0", "c");
        all.extend(lines_of(&second.entries(), "ns", "p-0", "c"));
        crate::support::multiset(&all).len() >= written.len()
    })
    .await;
    relay.terminate().await;
    // Nothing lost across the swap; a line is in both only if it was in flight at the reload
    // (the old receiver drains what it had queued).
    let mut all = lines_of(&first.entries(), "ns", "p-0", "c");
    all.extend(lines_of(&second.entries(), "ns", "p-0", "c"));
    let got = crate::support::multiset(&all);
    assert!(
        written.iter().all(|l| got.contains_key(l.as_str())),
        "a line was lost across the reload"
    );
}

#[actix_rt::test]
async fn removing_a_dead_receiver_lets_the_positions_move_on() {
    let sim = support::sim().await;
    let (good, dead) = (support::sink().await, support::sink().await);
    dead.fail_for(503, std::time::Duration::from_secs(3600));
    steady_pods(&sim, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let base = support::base_config(&sim) + "\n[shutdown]\ntimeout = \"1s\"\n";
    let with_dead = base.clone()
        + &support::loki_table("good", &good, "")
        + &support::loki_table("dead", &dead, "max_retries = 1000");
    let relay = support::relay_from_file(&path, &with_dead).await;
    eventually("the healthy receiver gets lines", || {
        good.entries().len() >= 50
    })
    .await;
    let acknowledged = || async {
        support::targets(&relay).await[0]
            .status
            .as_ref()
            .and_then(|s| s.acknowledged.clone())
    };
    assert_eq!(
        acknowledged().await,
        None,
        "nothing is acknowledged while a receiver fails"
    );

    std::fs::write(&path, base + &support::loki_table("good", &good, "")).unwrap();
    let (status, body) = support::http_post(relay.http_addr(), "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    support::eventually_async("positions move once the dead receiver is gone", || async {
        acknowledged().await.is_some()
    })
    .await;
    // Scoped to this test's receiver, which no other relay of the process has.
    let m = Metrics::scrape(relay.http_addr()).await;
    assert!(
        m.series(
            "loki_write_dropped_entries_total",
            &[("receiver", "dead"), ("reason", "receiver_removed")]
        ) > 0.0,
        "the removed receiver's lines are counted as dropped: {m:?}"
    );

    finish(&sim, &relay, 1).await;
    relay.shutdown().await;
    assert_exactly_once(
        "p-0",
        &sim.written_lines("ns", "p-0", "c"),
        &lines_of(&good.entries(), "ns", "p-0", "c"),
    );
}

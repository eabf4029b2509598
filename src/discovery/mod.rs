//! Discovery: the pod watch and `[[targets]]` turned into complete, relabelled target sets
//! (SPEC §2, §4.2, §4.3).
//!
//! - [`meta`] — the `__meta_kubernetes_*` labels of each container (pure).
//! - [`relabel`] — Prometheus' relabelling and the default rules (pure).
//! - [`build`] — relabelled labels to [`crate::target::Target`]s or rejections (pure).
//! - [`watch`] — the store the watchers feed, and the set it makes (pure).
//!
//! [`Discovery`] is the actor around them: it runs kube-runtime watchers (pods; nodes and
//! namespaces metadata-only when `attach_metadata` asks), feeds [`watch::WatchState`], and sends
//! the registry a *complete* [`SetTargets`] once every initial list is done, then at most one per
//! [`COALESCE`] while changes keep coming. Whole sets, never deltas: the registry diffs.

pub mod build;
pub mod meta;
pub mod relabel;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use ::kube::api::Api;
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use actix::prelude::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::model::{DiscoveryConfig, RelabelRule, StaticTarget};
use crate::target::SetTargets;
use watch::{WatchState, error_kind};

use crate::logging::RateLimited;

/// The shortest interval between two target sets while changes keep coming.
pub const COALESCE: Duration = Duration::from_millis(100);

/// How often one kind of watch error may be logged.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(30);

/// What [`start`] needs.
pub struct DiscoveryArgs {
    /// `None` runs on `[[targets]]` only.
    pub client: Option<::kube::Client>,
    pub config: DiscoveryConfig,
    /// `[[relabel]]` rules; empty = [`relabel::default_rules`].
    pub rules: Arc<Vec<RelabelRule>>,
    pub statics: Vec<StaticTarget>,
    pub registry: Recipient<SetTargets>,
}

/// New rules and static targets (SIGHUP reload): rebuild and resend the set, keep the watches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    /// Empty = [`relabel::default_rules`].
    pub rules: Arc<Vec<RelabelRule>>,
    pub statics: Vec<StaticTarget>,
}

/// True once the first complete set was sent (readiness).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsSynced;

/// The discovery actor.
pub struct Discovery {
    client: Option<::kube::Client>,
    config: DiscoveryConfig,
    state: WatchState,
    registry: Recipient<SetTargets>,
    /// The first complete set was sent.
    synced: bool,
    /// A send is scheduled within [`COALESCE`].
    flush_pending: bool,
    /// One line per resource and error kind per [`ERROR_LOG_PERIOD`].
    throttle: RateLimited<(&'static str, &'static str)>,
    /// The running watch streams, cancelled by [`Restart`].
    watches: Vec<SpawnHandle>,
}

/// The rules in force: the configured ones, or the defaults when there are none.
pub fn effective_rules(rules: Arc<Vec<RelabelRule>>) -> Arc<Vec<RelabelRule>> {
    if rules.is_empty() {
        Arc::new(relabel::default_rules())
    } else {
        rules
    }
}

/// Starts the discovery actor on the current actix system.
pub fn start(args: DiscoveryArgs) -> Addr<Discovery> {
    Discovery::new(args).start()
}

impl Discovery {
    fn new(mut args: DiscoveryArgs) -> Discovery {
        // A namespace listed twice would be watched twice and every target rejected as a duplicate.
        let mut seen = std::collections::BTreeSet::new();
        args.config.namespaces.retain(|ns| seen.insert(ns.clone()));
        let watching = args.config.enabled && args.client.is_some();
        let scopes = match (watching, args.config.namespaces.len()) {
            (false, _) => 0,
            (true, 0) => 1,
            (true, n) => n,
        };
        let attach = if watching {
            args.config.attach_metadata
        } else {
            Default::default()
        };
        let state = WatchState::new(scopes, attach, effective_rules(args.rules), &args.statics);
        Discovery {
            client: args.client.filter(|_| watching),
            config: args.config,
            state,
            registry: args.registry,
            synced: false,
            flush_pending: false,
            throttle: RateLimited::new(ERROR_LOG_PERIOD),
            watches: Vec::new(),
        }
    }

    /// Starts watching (or sends the static targets when pod discovery is off).
    fn begin(&mut self, ctx: &mut Context<Self>) {
        match self.client.clone() {
            Some(client) => self.start_watchers(client, ctx),
            None => {
                tracing::info!("pod discovery off: static targets only");
                self.send();
            }
        }
    }
}

/// One item from any of the watchers.
enum Watched {
    /// Boxed: a `Pod` is large, metadata events are not.
    Pod(usize, Box<watcher::Result<Event<Pod>>>),
    Node(watcher::Result<Event<ObjectMeta>>),
    Namespace(watcher::Result<Event<ObjectMeta>>),
}

/// The object metadata of a metadata-only event.
fn metadata_event<K>(event: Event<PartialObjectMeta<K>>) -> Event<ObjectMeta> {
    match event {
        Event::Apply(o) => Event::Apply(o.metadata),
        Event::Delete(o) => Event::Delete(o.metadata),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.metadata),
        Event::InitDone => Event::InitDone,
    }
}

impl Discovery {
    fn watch_config(&self) -> watcher::Config {
        let mut cfg = watcher::Config::default();
        if let Some(l) = self.config.label_selector.as_deref() {
            cfg = cfg.labels(l);
        }
        if let Some(f) = self.config.field_selector.as_deref() {
            cfg = cfg.fields(f);
        }
        cfg
    }

    fn start_watchers(&mut self, client: ::kube::Client, ctx: &mut Context<Self>) {
        let cfg = self.watch_config();
        let apis: Vec<Api<Pod>> = if self.config.namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            self.config
                .namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect()
        };
        for (scope, api) in apis.into_iter().enumerate() {
            let events = watcher::watcher(api, cfg.clone()).default_backoff();
            let h = ctx.add_stream(events.map(move |e| Watched::Pod(scope, Box::new(e))));
            self.watches.push(h);
        }
        // Metadata-only: nodes carry image lists and status we never read.
        let attach = self.config.attach_metadata;
        if attach.node {
            let api = Api::<PartialObjectMeta<Node>>::all(client.clone());
            let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let h = ctx.add_stream(events.map(|e| Watched::Node(e.map(metadata_event))));
            self.watches.push(h);
        }
        if attach.namespace {
            let api = Api::<PartialObjectMeta<Namespace>>::all(client);
            let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let h = ctx.add_stream(events.map(|e| Watched::Namespace(e.map(metadata_event))));
            self.watches.push(h);
        }
        tracing::info!(
            namespaces = ?self.config.namespaces,
            label_selector = self.config.label_selector.as_deref().unwrap_or(""),
            field_selector = self.config.field_selector.as_deref().unwrap_or(""),
            attach_node = attach.node,
            attach_namespace = attach.namespace,
            "discovery watching pods"
        );
    }

    /// The store changed: send now if this completes the first sync, else within [`COALESCE`].
    fn changed(&mut self, ctx: &mut Context<Self>) {
        if !self.synced {
            if self.state.is_synced() {
                self.send();
            }
            return;
        }
        if !self.flush_pending {
            self.flush_pending = true;
            ctx.run_later(COALESCE, |act, _| {
                act.flush_pending = false;
                // A restart in between resets the sync: never send a partial set.
                if act.synced {
                    act.send();
                }
            });
        }
    }

    fn send(&mut self) {
        let set = self.state.target_set();
        let (targets, rejected) = (set.targets.len(), set.rejected.len());
        if !self.synced {
            self.synced = true;
            tracing::info!(
                pods = self.state.pod_count(),
                targets,
                rejected,
                "discovery synced: first target set sent"
            );
        } else {
            tracing::debug!(targets, rejected, "target set sent");
        }
        self.registry.do_send(SetTargets(set));
    }

    fn watch_error(&mut self, resource: &'static str, e: &watcher::Error) {
        let kind = error_kind(e);
        if let Some(held) = self.throttle.check((resource, kind)) {
            tracing::warn!(
                resource,
                kind,
                error = %e,
                suppressed = held,
                "watch failed; retrying with backoff (check RBAC: list and watch {resource})"
            );
        }
    }
}

impl Actor for Discovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.begin(ctx);
    }
}

impl StreamHandler<Watched> for Discovery {
    fn handle(&mut self, item: Watched, ctx: &mut Context<Self>) {
        let changed = match item {
            Watched::Pod(scope, e) => match *e {
                Ok(e) => self.state.on_pod(scope, e),
                Err(e) => {
                    self.watch_error("pods", &e);
                    false
                }
            },
            Watched::Node(Ok(e)) => self.state.on_node(e),
            Watched::Namespace(Ok(e)) => self.state.on_namespace(e),
            Watched::Node(Err(e)) => {
                self.watch_error("nodes", &e);
                false
            }
            Watched::Namespace(Err(e)) => {
                self.watch_error("namespaces", &e);
                false
            }
        };
        if changed {
            self.changed(ctx);
        }
    }

    /// Watchers never end on their own; one that does must not stop the actor.
    fn finished(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!("a discovery watch stream ended; the others keep running");
    }
}

impl Handler<Reconfigure> for Discovery {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, _ctx: &mut Context<Self>) {
        self.state
            .reconfigure(effective_rules(msg.rules), &msg.statics);
        // Before the first sync, the first set will carry the new rules.
        if self.synced {
            self.send();
        }
    }
}

/// Reload of `[kubernetes]` or `[discovery]`: replaces the watches (and client) in place. The
/// next set is sent only once the new watches listed everything, so the registry never sees a
/// partial set (which would drain running tailers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restart(pub DiscoveryArgs);

impl Handler<Restart> for Discovery {
    type Result = ();

    fn handle(&mut self, Restart(args): Restart, ctx: &mut Context<Self>) {
        for h in self.watches.drain(..) {
            ctx.cancel_future(h);
        }
        *self = Discovery::new(args);
        tracing::info!("discovery restarting its watches (reload)");
        self.begin(ctx);
    }
}

impl Handler<IsSynced> for Discovery {
    type Result = bool;

    fn handle(&mut self, _msg: IsSynced, _ctx: &mut Context<Self>) -> bool {
        self.synced
    }
}

/// Stops the watches and the actor (shutdown): no further set is sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDiscovery;

impl Handler<StopDiscovery> for Discovery {
    type Result = ();

    fn handle(&mut self, _msg: StopDiscovery, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::config::model::RelabelAction;
    use crate::target::TargetSet;

    /// A registry stand-in that records every set.
    struct Recorder(Arc<Mutex<Vec<TargetSet>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<SetTargets> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: SetTargets, _ctx: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.0);
        }
    }

    async fn wait_for_sets(sets: &Mutex<Vec<TargetSet>>, n: usize) -> Vec<TargetSet> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = sets.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn static_target(ns: &str, pod: &str) -> StaticTarget {
        StaticTarget {
            labels: [
                ("__pod_namespace__", ns),
                ("__pod_name__", pod),
                ("__pod_container_name__", "c"),
                ("__pod_uid__", "u"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    #[actix_rt::test]
    async fn without_a_client_static_targets_are_sent_and_resent_on_reconfigure() {
        let sets = Arc::new(Mutex::new(Vec::new()));
        let registry = Recorder(sets.clone()).start().recipient();
        let addr = start(DiscoveryArgs {
            client: None,
            config: DiscoveryConfig {
                enabled: true,
                ..DiscoveryConfig::default()
            },
            rules: Arc::new(Vec::new()),
            statics: vec![static_target("ns", "a"), static_target("ns", "b")],
            registry,
        });
        assert!(addr.send(IsSynced).await.unwrap());
        let got = wait_for_sets(&sets, 1).await;
        assert_eq!(got.len(), 1);
        let ids: Vec<String> = got[0].targets.keys().map(|id| id.to_string()).collect();
        assert_eq!(ids, ["ns/a/c", "ns/b/c"]);
        let a = got[0].targets.values().next().unwrap();
        assert_eq!(
            a.stream.labels.as_text(),
            r#"{container="c", job="ns/c", namespace="ns", pod="a"}"#
        );

        let drop_b = RelabelRule {
            source_labels: vec!["__pod_name__".into()],
            regex: relabel::anchored("b").unwrap(),
            action: RelabelAction::Drop,
            ..relabel::rule_with_defaults()
        };
        let mut rules = vec![drop_b];
        rules.extend(relabel::default_rules());
        addr.send(Reconfigure {
            rules: Arc::new(rules),
            statics: vec![static_target("ns", "a"), static_target("ns", "b")],
        })
        .await
        .unwrap();
        let got = wait_for_sets(&sets, 2).await;
        assert_eq!(got.len(), 2);
        let ids: Vec<String> = got[1].targets.keys().map(|id| id.to_string()).collect();
        assert_eq!(ids, ["ns/a/c"]);
        assert!(got[1].rejected.is_empty());
    }

    fn ids(set: &TargetSet) -> Vec<String> {
        set.targets.keys().map(|id| id.to_string()).collect()
    }

    /// Waits until the newest set satisfies `f`; returns it.
    async fn wait_for_set(
        sets: &Mutex<Vec<TargetSet>>,
        f: impl Fn(&TargetSet) -> bool,
    ) -> TargetSet {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(last) = sets.lock().unwrap().last().filter(|s| f(s)) {
                return last.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out; sets: {:?}",
                sets.lock().unwrap().iter().map(ids).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn watches_pods_of_the_configured_namespaces_against_the_simulator() {
        use crate::sim::{ContainerSpec, PodSpec, Sim};
        let sim = Sim::start("127.0.0.1:0").await.expect("bind");
        sim.add_pod(
            PodSpec::new("shop", "web-1")
                .label("app", "web")
                .container(ContainerSpec::new("nginx")),
        );
        sim.add_pod(PodSpec::new("other", "x").container(ContainerSpec::new("c")));
        let config = ::kube::Config::new(sim.url().parse().expect("url"));
        let client = ::kube::Client::try_from(config).expect("client");

        let sets = Arc::new(Mutex::new(Vec::new()));
        let registry = Recorder(sets.clone()).start().recipient();
        let addr = start(DiscoveryArgs {
            client: Some(client),
            config: DiscoveryConfig {
                enabled: true,
                namespaces: vec!["shop".into(), "shop".into()],
                ..DiscoveryConfig::default()
            },
            rules: Arc::new(Vec::new()),
            statics: vec![static_target("static", "s")],
            registry,
        });

        let first = wait_for_set(&sets, |_| true).await;
        assert_eq!(ids(&first), ["shop/web-1/nginx", "static/s/c"]);
        assert!(first.rejected.is_empty(), "{:?}", first.rejected);
        let web = first.targets.values().next().unwrap();
        assert_eq!(
            web.stream.labels.as_text(),
            r#"{app="web", container="nginx", job="shop/nginx", namespace="shop", pod="web-1"}"#
        );
        assert!(web.container_id.is_some());
        assert!(addr.send(IsSynced).await.unwrap());

        sim.add_pod(PodSpec::new("shop", "web-2").container(ContainerSpec::new("nginx")));
        wait_for_set(&sets, |s| {
            ids(s) == ["shop/web-1/nginx", "shop/web-2/nginx", "static/s/c"]
        })
        .await;
        sim.delete_pod("shop", "web-1");
        wait_for_set(&sets, |s| ids(s) == ["shop/web-2/nginx", "static/s/c"]).await;
    }
}

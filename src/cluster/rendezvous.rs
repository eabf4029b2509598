//! Who owns a target in a cluster of replicas (SPEC §7): rendezvous hashing, pure.
//!
//! Every replica computes, for a target's shard key, a score per member and the member with the
//! highest score owns it (highest random weight). All replicas that agree on the member list
//! agree on every owner without talking to each other, and when a member joins or leaves only
//! the targets it wins or held move: about `1/n` of them, nothing else.
//!
//! The shard key is built from the same labels the reference hashes, so a target keeps its
//! shard when its other labels change. The hash must be the same in every replica and every
//! version of the relay: FNV-1a (the `fnv` crate; std's hasher is explicitly unstable across
//! releases), finished with splitmix64 so that keys differing in one byte score independently.

use std::hash::Hasher;

use crate::target::LabelMap;

/// The labels the shard key is made of, in this order (the reference's).
pub const SHARD_LABELS: [&str; 12] = [
    "__meta_kubernetes_namespace",
    "__meta_kubernetes_pod_container_name",
    "__meta_kubernetes_pod_name",
    "__meta_kubernetes_pod_uid",
    "__pod_container_name__",
    "__pod_name__",
    "__pod_namespace__",
    "__pod_uid__",
    "container",
    "job",
    "namespace",
    "pod",
];

/// A target's shard key: `name=value` of each [`SHARD_LABELS`] label present, separated by
/// a byte that cannot occur in a label name.
pub fn shard_key(labels: &LabelMap) -> String {
    let mut key = String::new();
    for name in SHARD_LABELS {
        if let Some(value) = labels.get(name) {
            key.push_str(name);
            key.push('=');
            key.push_str(value);
            key.push('\u{1}');
        }
    }
    key
}

/// The score of `member` for `key`: stable across processes and versions.
pub fn score(member: &str, key: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(member.as_bytes());
    h.write_u8(0);
    h.write(key.as_bytes());
    splitmix64(h.finish())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The owner of `key` among `members` (none when there are no members). Ties, which a 64-bit
/// score makes vanishingly rare, go to the smaller member name so every replica agrees.
pub fn owner<'a, I>(members: I, key: &str) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    members
        .into_iter()
        .map(|m| (score(m, key), m))
        .max_by(|(sa, ma), (sb, mb)| sa.cmp(sb).then_with(|| mb.cmp(ma)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PINNED: u64 = 4_361_310_282_584_757_607;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut labels = LabelMap::new();
                labels.insert(
                    "__meta_kubernetes_namespace".into(),
                    format!("ns-{}", i % 7),
                );
                labels.insert("__meta_kubernetes_pod_name".into(), format!("pod-{i}"));
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    format!("c-{}", i % 3),
                );
                labels.insert("__meta_kubernetes_pod_uid".into(), format!("uid-{i}"));
                shard_key(&labels)
            })
            .collect()
    }

    #[test]
    fn shard_key_uses_only_the_reference_labels_in_order() {
        let mut labels = LabelMap::new();
        labels.insert("pod".into(), "p".into());
        labels.insert("namespace".into(), "n".into());
        labels.insert("app".into(), "ignored".into());
        assert_eq!(shard_key(&labels), "namespace=n\u{1}pod=p\u{1}");
        let mut other = labels.clone();
        other.insert("app".into(), "changed".into());
        assert_eq!(shard_key(&labels), shard_key(&other));
    }

    #[test]
    fn scores_are_stable_across_versions() {
        // Pinned: a change here reshuffles every cluster on upgrade.
        assert_eq!(score("relay-0", "pod=a\u{1}"), PINNED);
        assert_ne!(
            score("relay-0", "pod=a\u{1}"),
            score("relay-1", "pod=a\u{1}")
        );
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner(std::iter::empty(), "k"), None);
        assert_eq!(owner(["only"], "k"), Some("only"));
    }

    #[test]
    fn ten_thousand_targets_over_three_members_split_evenly() {
        let members = ["relay-a", "relay-b", "relay-c"];
        let mut counts = [0usize; 3];
        for k in keys(10_000) {
            let o = owner(members, &k).expect("an owner");
            counts[members.iter().position(|m| *m == o).expect("a member")] += 1;
        }
        for c in counts {
            // A third is 3,333; ±10 %.
            assert!((3_000..=3_667).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_fourth_member_takes_about_a_quarter_and_moves_nothing_else() {
        let three = ["relay-a", "relay-b", "relay-c"];
        let four = ["relay-a", "relay-b", "relay-c", "relay-d"];
        let ks = keys(10_000);
        let mut moved = 0;
        for k in &ks {
            let before = owner(three, k).expect("owner");
            let after = owner(four, k).expect("owner");
            if before != after {
                assert_eq!(after, "relay-d", "a move goes only to the new member");
                moved += 1;
            }
        }
        // A quarter is 2,500; ±10 %.
        assert!((2_250..=2_750).contains(&moved), "{moved}");
    }

    proptest! {
        #[test]
        fn every_replica_agrees_whatever_the_order(mut members in proptest::collection::vec("[a-z0-9-]{1,12}", 1..8), key in ".{0,40}") {
            let a = owner(members.iter().map(String::as_str), &key).map(str::to_owned);
            members.reverse();
            let b = owner(members.iter().map(String::as_str), &key).map(str::to_owned);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn removing_a_non_owner_keeps_the_owner(members in proptest::collection::btree_set("[a-z]{1,8}", 2..8), key in ".{0,40}") {
            let all: Vec<&str> = members.iter().map(String::as_str).collect();
            let o = owner(all.iter().copied(), &key).expect("owner");
            for gone in &all {
                if *gone == o { continue; }
                let rest = all.iter().copied().filter(|m| m != gone);
                prop_assert_eq!(owner(rest, &key), Some(o));
            }
        }
    }
}

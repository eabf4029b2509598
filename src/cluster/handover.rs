//! What a replica does with one target (SPEC §7 hand-over), pure and table-tested.
//!
//! A target is *held* by a replica while the replica may run a tailer for it; each replica
//! publishes what it holds in its positions ConfigMap. The rules that give no gap, no repeat and
//! never two tailers at once:
//!
//! - a replica that holds a target it no longer owns (the owner changed, or it lost its Lease)
//!   releases it: stops the tailer, waits for the acknowledgements, commits the cursor and
//!   publishes that it no longer holds it — all in one ConfigMap write;
//! - the owner starts a target only when no *live* member holds it: it waits for the release,
//!   or for the holder's Lease to expire (a killed replica);
//! - starting is claim-then-verify: the owner first publishes the claim, then reads every
//!   replica's ConfigMaps again and backs off if another live member holds the target too
//!   (two replicas whose member lists briefly disagree). Both write before they read, so at
//!   least one of them sees the other; the one that sees backs off.

use std::collections::BTreeSet;

/// This replica's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// This replica's identity.
    pub me: String,
    /// The members: holders of unexpired Leases (this replica included while it has its own).
    pub members: BTreeSet<String>,
    /// This replica's own Lease exists and was renewed within its duration.
    pub have_lease: bool,
}

/// What to do with one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Held and owned: keep tailing.
    Run,
    /// Owned, held by no live member: claim it (then verify, then start).
    Claim,
    /// Owned, but a live member still holds it: wait for its release (or its Lease to expire).
    Wait { holder: String },
    /// Held but no longer owned: stop, wait for acknowledgements, commit, publish the release.
    Release,
    /// Neither owned nor held.
    Ignore,
}

/// Decides for one target whose owner (by rendezvous over `view.members`) is `owner`, which
/// this replica holds or not, and which the replicas `holders` say they hold.
pub fn decide<'a>(
    view: &View,
    owner: Option<&str>,
    held_by_me: bool,
    holders: impl IntoIterator<Item = &'a str>,
) -> Action {
    let mine = view.have_lease && owner == Some(view.me.as_str());
    match (mine, held_by_me) {
        (false, true) => Action::Release,
        (false, false) => Action::Ignore,
        (true, true) => Action::Run,
        (true, false) => match holders
            .into_iter()
            .find(|h| *h != view.me && view.members.contains(*h))
        {
            Some(holder) => Action::Wait {
                holder: holder.to_string(),
            },
            None => Action::Claim,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(me: &str, members: &[&str], have_lease: bool) -> View {
        View {
            me: me.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            have_lease,
        }
    }

    #[test]
    fn every_case() {
        let abc = view("a", &["a", "b", "c"], true);
        type Case<'a> = (&'a View, Option<&'a str>, bool, &'a [&'a str], Action);
        let cases: &[Case] = &[
            // Mine and running: keep it.
            (&abc, Some("a"), true, &["a"], Action::Run),
            // Mine, nobody holds it (new target, or released): claim.
            (&abc, Some("a"), false, &[], Action::Claim),
            // Mine, only I am listed (a claim of mine not yet applied): claim.
            (&abc, Some("a"), false, &["a"], Action::Claim),
            // Mine, b still runs it: wait for b's release.
            (
                &abc,
                Some("a"),
                false,
                &["b"],
                Action::Wait { holder: "b".into() },
            ),
            // Mine, held by d whose Lease expired (not a member): take over.
            (&abc, Some("a"), false, &["d"], Action::Claim),
            // b's now and I run it: release.
            (&abc, Some("b"), true, &["a"], Action::Release),
            // b's and not mine: nothing.
            (&abc, Some("b"), false, &["b"], Action::Ignore),
            (&abc, None, false, &[], Action::Ignore),
        ];
        for (v, owner, held, holders, want) in cases {
            assert_eq!(
                decide(v, *owner, *held, holders.iter().copied()),
                *want,
                "owner {owner:?}, held {held}, holders {holders:?}"
            );
        }
    }

    #[test]
    fn without_a_lease_nothing_runs() {
        let lost = view("a", &["b"], false);
        assert_eq!(decide(&lost, Some("a"), true, []), Action::Release);
        assert_eq!(decide(&lost, Some("a"), false, []), Action::Ignore);
    }
}

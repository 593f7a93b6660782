//! Pure: one event per change of an owner (`spec.groupBy: Owner`). The rollouts of one Helm
//! release, Argo CD Application or Flux object that start within a window of each other are one
//! change; its event goes out once the last of them finished, or after the longest wait with what
//! finished, naming what did not.
//!
//! Each member stays its own pending ledger entry, tagged with its group's id: delivery holds
//! tagged entries while their group is open and sends the closed group's entries as one request,
//! which settles them together, exactly as a combined event does. A restart reloads the tagged
//! entries and opens their groups again ([`Groups::reopen`]); rollouts still under way join them
//! as they are seen again, so a crash mid-group neither loses a member nor sends the group twice.
//! The in-memory part (who is still rolling out) is decided again from the workloads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::domain::context::Owner;
use crate::domain::payload::{DeploymentEvent, MAX_EVENT_BYTES, MAX_SUMMARY_CHARS};
use crate::domain::report;
use crate::domain::rollout::Outcome;
use crate::domain::template::Templates;
use crate::domain::text::{on_cluster, truncate};
use crate::domain::uid::Uid;
use crate::pipeline::{
    DEFAULT_GROUP_MAX_WAIT_SECONDS, DEFAULT_GROUP_WINDOW_SECONDS, GroupBy, IlertPipelineSpec,
};

/// How a pipeline groups: `spec.groupWindowSeconds` and `spec.groupMaxWaitSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How far apart the starts of one change's rollouts may be.
    pub window: Duration,
    /// The longest a change waits for its last rollout, from its first start.
    pub max_wait: Duration,
}

impl Policy {
    /// None: one event per rollout (`groupBy: Workload`, the default).
    pub fn of(spec: &IlertPipelineSpec) -> Option<Policy> {
        if spec.group_by != GroupBy::Owner {
            return None;
        }
        let secs = |s: Option<u32>, default| Duration::from_secs(u64::from(s.unwrap_or(default)));
        let window = secs(spec.group_window_seconds, DEFAULT_GROUP_WINDOW_SECONDS);
        let max_wait = secs(spec.group_max_wait_seconds, DEFAULT_GROUP_MAX_WAIT_SECONDS);
        Some(Policy {
            window,
            max_wait: max_wait.max(window),
        })
    }
}

/// What makes two workloads' rollouts one change: the same owner object.
pub fn owner_key(o: &Owner) -> String {
    format!(
        "{}/{}/{}/{}",
        o.tool,
        o.kind,
        o.namespace.as_deref().unwrap_or_default(),
        o.name
    )
}

/// The owner key of a group id (`<owner key>@<stamp>`).
pub fn owner_of(id: &str) -> &str {
    id.rsplit_once('@').map_or(id, |(owner, _)| owner)
}

fn stamp_of(id: &str) -> i64 {
    id.rsplit_once('@')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or_default()
}

/// How long past its longest wait a change still waits for an event being built (its history is
/// listed from the API server, which retries for a few seconds).
const BUILD_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Group {
    owner: String,
    first: Instant,
    last: Instant,
    /// Members rolling out: uid -> `Kind/namespace/name`.
    rolling: BTreeMap<Uid, String>,
    /// Members that finished and whose event is being built (not queued yet).
    building: BTreeSet<Uid>,
}

impl Group {
    fn new(owner: &str, now: Instant) -> Self {
        Group {
            owner: owner.to_string(),
            first: now,
            last: now,
            rolling: BTreeMap::new(),
            building: BTreeSet::new(),
        }
    }

    fn busy(&self) -> bool {
        !self.rolling.is_empty() || !self.building.is_empty()
    }

    /// Whether a rollout that starts now joins this change.
    fn accepts(&self, p: &Policy, now: Instant) -> bool {
        now < self.first + p.max_wait && (self.busy() || now < self.last + p.window)
    }

    /// Whether its events wait. An event being built holds the group past its longest wait
    /// (sending without it would split the change), but not for ever.
    fn open(&self, p: &Policy, now: Instant) -> bool {
        (!self.building.is_empty() && now < self.first + p.max_wait + BUILD_GRACE)
            || self.accepts(p, now)
    }

    /// When it closes if nothing changes (an event being built wakes delivery once queued).
    fn closes_at(&self, p: &Policy) -> Option<Instant> {
        let cap = self.first + p.max_wait;
        if !self.building.is_empty() {
            return Some(cap + BUILD_GRACE);
        }
        Some(if self.rolling.is_empty() {
            cap.min(self.last + p.window)
        } else {
            cap
        })
    }
}

/// The changes of one pipeline under way: which rollouts belong together, and whether their
/// events may go.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    policy: Option<Policy>,
    groups: HashMap<String, Group>,
    /// Per owner key: the id of its newest group.
    current: HashMap<String, String>,
}

impl Groups {
    /// A new policy from the pipeline's spec. None (grouping turned off): nothing is held any more.
    pub fn set_policy(&mut self, policy: Option<Policy>) {
        if policy.is_none() {
            self.clear();
        }
        self.policy = policy;
    }

    /// Forgets every change: a new leader term rebuilds them from the ledger and the workloads.
    pub fn clear(&mut self) {
        self.groups.clear();
        self.current.clear();
    }

    pub fn policy(&self) -> Option<Policy> {
        self.policy
    }

    /// The newest group of `owner`, if a rollout starting now joins it.
    fn accepting(&self, p: &Policy, owner: &str, now: Instant) -> Option<String> {
        let id = self.current.get(owner)?;
        self.groups
            .get(id)
            .filter(|g| g.accepts(p, now))
            .map(|_| id.clone())
    }

    /// The group a rollout of `owner` starting now joins: the newest open one, or a new one whose
    /// id carries `stamp` (the wall clock in milliseconds: unique across restarts).
    fn join(&mut self, p: &Policy, owner: &str, now: Instant, stamp: i64) -> String {
        if let Some(id) = self.accepting(p, owner, now) {
            return id;
        }
        self.sweep(p, now);
        let mut id = format!("{owner}@{stamp}");
        let mut stamp = stamp;
        while self.groups.contains_key(&id) {
            stamp += 1;
            id = format!("{owner}@{stamp}");
        }
        self.groups.insert(id.clone(), Group::new(owner, now));
        self.current.insert(owner.to_string(), id.clone());
        id
    }

    /// Workload `uid` (`reference`) of `owner` rolls out: it joins its owner's change.
    /// Seen again while it rolls out, nothing changes.
    pub fn rolling(&mut self, owner: &str, uid: &Uid, reference: &str, now: Instant, stamp: i64) {
        let Some(p) = self.policy else { return };
        if let Some(id) = self.accepting(&p, owner, now)
            && self.groups[&id].rolling.contains_key(uid)
        {
            return;
        }
        self.stopped(uid);
        let id = self.join(&p, owner, now, stamp);
        let g = self.groups.get_mut(&id).expect("joined");
        g.rolling.insert(uid.clone(), reference.to_string());
        g.last = g.last.max(now);
    }

    /// Workload `uid` of `owner` finished a rollout it reports: the id of the change its event
    /// belongs to (the tag of its ledger entry), held open until [`Groups::queued`]. None without
    /// a policy.
    pub fn finished(&mut self, owner: &str, uid: &Uid, now: Instant, stamp: i64) -> Option<String> {
        let p = self.policy?;
        let joined = self
            .accepting(&p, owner, now)
            .filter(|id| self.groups[id].rolling.contains_key(uid));
        let id = match joined {
            Some(id) => id,
            None => {
                self.stopped(uid);
                let id = self.join(&p, owner, now, stamp);
                let g = self.groups.get_mut(&id).expect("joined");
                g.last = g.last.max(now);
                id
            }
        };
        let g = self.groups.get_mut(&id).expect("joined");
        g.rolling.remove(uid);
        g.building.insert(uid.clone());
        Some(id)
    }

    /// The event of member `uid` of group `id` is queued.
    pub fn queued(&mut self, id: &str, uid: &Uid) {
        if let Some(g) = self.groups.get_mut(id) {
            g.building.remove(uid);
        }
    }

    /// Workload `uid` no longer rolls out with nothing to report (its rollout was known, it was
    /// deleted, or the pipeline no longer selects it). Returns whether a group changed: it may
    /// close sooner.
    pub fn stopped(&mut self, uid: &Uid) -> bool {
        let mut changed = false;
        for g in self.groups.values_mut() {
            changed |= g.rolling.remove(uid).is_some();
        }
        changed
    }

    /// A pending entry tagged `id` was reloaded (a restart or a new leader): its change is open
    /// again, from now, so that its rollouts still under way join it as they are seen again.
    pub fn reopen(&mut self, id: &str, now: Instant) {
        if self.policy.is_none() || self.groups.contains_key(id) {
            return;
        }
        let owner = owner_of(id).to_string();
        self.groups.insert(id.to_string(), Group::new(&owner, now));
        let newer = self
            .current
            .get(&owner)
            .is_some_and(|c| stamp_of(c) > stamp_of(id));
        if !newer {
            self.current.insert(owner, id.to_string());
        }
    }

    /// Whether events tagged `id` wait for the rest of their change. A group this instance does
    /// not know (grouping turned off, or already sent) holds nothing.
    pub fn holds(&self, id: &str, now: Instant) -> bool {
        match (self.policy, self.groups.get(id)) {
            (Some(p), Some(g)) => g.open(&p, now),
            _ => false,
        }
    }

    /// The changes whose events wait now.
    pub fn open_ids(&self, now: Instant) -> HashSet<String> {
        let Some(p) = self.policy else {
            return HashSet::new();
        };
        self.groups
            .iter()
            .filter(|(_, g)| g.open(&p, now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The next moment an open group closes by itself.
    pub fn next_close(&self, now: Instant) -> Option<Instant> {
        let p = self.policy?;
        self.groups
            .values()
            .filter(|g| g.open(&p, now))
            .filter_map(|g| g.closes_at(&p))
            .min()
    }

    /// The members of group `id` still rolling out (`Kind/namespace/name`), when it closed at its
    /// longest wait.
    pub fn unfinished(&self, id: &str) -> Vec<String> {
        let mut refs: Vec<String> = self
            .groups
            .get(id)
            .map(|g| g.rolling.values().cloned().collect())
            .unwrap_or_default();
        refs.sort();
        refs
    }

    /// Group `id`'s event was delivered (or refused for good): it is over.
    pub fn sent(&mut self, id: &str) {
        if let Some(g) = self.groups.remove(id)
            && self.current.get(&g.owner).map(String::as_str) == Some(id)
        {
            self.current.remove(&g.owner);
        }
    }

    /// Forgets groups that closed with nothing left to wait for.
    fn sweep(&mut self, p: &Policy, now: Instant) {
        let before = self.groups.len();
        self.groups.retain(|_, g| g.busy() || g.open(p, now));
        if self.groups.len() != before {
            let groups = &self.groups;
            self.current.retain(|_, id| groups.contains_key(id));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.len()
    }
}

/// What a closed group's request needs beside its members' events.
#[derive(Clone, Copy, Debug, Default)]
pub struct Closing<'a> {
    /// Members still rolling out at the longest wait.
    pub unfinished: &'a [String],
    /// The pipeline's templates: they render over the change (its `workloads`).
    pub templates: Option<&'a Templates>,
}

/// How bad an outcome is, for the worst of a change.
fn severity(outcome: &str) -> u8 {
    match Outcome::parse(outcome) {
        Some(Outcome::Completed) => 0,
        Some(Outcome::RolledBack) => 1,
        Some(Outcome::Aborted) => 2,
        Some(Outcome::Failed) | None => 3,
    }
}

fn text<'a>(d: &'a Map<String, Value>, key: &str) -> &'a str {
    d.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `nginx:1.26` for `docker.io/library/nginx:1.26`: what a human scans for in one line.
fn short_image(image: &str) -> &str {
    image.rsplit('/').next().unwrap_or(image)
}

fn member_line(d: &Map<String, Value>) -> String {
    let mut images: Vec<&str> = d
        .get("images")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .map(short_image)
                .collect()
        })
        .unwrap_or_default();
    images.sort_unstable();
    images.dedup();
    let name = text(d, "name");
    if images.is_empty() {
        name.to_string()
    } else {
        format!("{name} {}", images.join("+"))
    }
}

/// `helm release shop`, `argocd application billing`, `flux kustomization apps`.
fn owner_phrase(owner: &Value) -> String {
    let field = |k: &str| owner.get(k).and_then(Value::as_str).unwrap_or_default();
    format!(
        "{} {} {}",
        field("tool"),
        field("kind").to_ascii_lowercase(),
        field("name")
    )
}

/// A value every member's details share (a commit, the tool that changed them all).
fn common(members: &[DeploymentEvent], key: &str) -> Option<Value> {
    let first = members.first()?.custom_details.get(key)?;
    members[1..]
        .iter()
        .all(|m| m.custom_details.get(key) == Some(first))
        .then(|| first.clone())
}

/// The one event of a closed change: `helm release shop rolled out 3 workloads on prod-eu: api
/// nginx:1.26, web web:2.0, worker worker:4.2 (1 failed: worker)`. Its outcome is the worst of
/// its members; `customDetails.workloads` has each member's details, `unfinished` names what had
/// not finished at the longest wait; both in order of namespace and name. A change of one finished rollout is that rollout's event.
/// Returns, beside it, what did not render of the pipeline's templates.
pub fn event(
    members: &[DeploymentEvent],
    closing: Closing,
    cluster: &str,
) -> (DeploymentEvent, Vec<String>) {
    debug_assert!(!members.is_empty());
    if members.len() == 1 && closing.unfinished.is_empty() {
        return (members[0].clone(), Vec::new());
    }
    // In the order a reader looks them up: by namespace and name.
    let mut details: Vec<&Map<String, Value>> = members.iter().map(|m| &m.custom_details).collect();
    details.sort_by_key(|d| (text(d, "namespace"), text(d, "name"), text(d, "kind")));
    let owner = details
        .iter()
        .find_map(|d| d.get("managedBy").and_then(|m| m.get(0)).cloned())
        .unwrap_or(Value::Null);
    let worst = details
        .iter()
        .map(|d| text(d, "outcome"))
        .max_by_key(|o| severity(o))
        .unwrap_or(Outcome::Completed.as_str());
    let lines: Vec<String> = details.iter().map(|d| member_line(d)).collect();
    let mut tail = Vec::new();
    for (outcome, verb) in [
        (Outcome::Failed, "failed"),
        (Outcome::Aborted, "aborted"),
        (Outcome::RolledBack, "rolled back"),
    ] {
        let mut names: Vec<&str> = details
            .iter()
            .filter(|d| text(d, "outcome") == outcome.as_str())
            .map(|d| text(d, "name"))
            .collect();
        names.sort_unstable();
        if !names.is_empty() {
            tail.push(format!("{} {verb}: {}", names.len(), names.join(", ")));
        }
    }
    if !closing.unfinished.is_empty() {
        let names: Vec<&str> = closing
            .unfinished
            .iter()
            .map(|r| r.rsplit('/').next().unwrap_or(r))
            .collect();
        tail.push(format!(
            "{} not finished: {}",
            names.len(),
            names.join(", ")
        ));
    }
    let total = members.len() + closing.unfinished.len();
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(" ({})", tail.join("; "))
    };
    let summary = truncate(
        &format!(
            "{} rolled out {total} workloads{}: {}{tail}",
            owner_phrase(&owner),
            on_cluster(cluster),
            lines.join(", ")
        ),
        MAX_SUMMARY_CHARS,
    );
    let timestamp = members
        .iter()
        .map(|m| m.timestamp)
        .max()
        .unwrap_or_default();
    let mut d = Map::new();
    if !cluster.is_empty() {
        d.insert("cluster".into(), json!(cluster));
    }
    d.insert("group".into(), owner.clone());
    if let Some(m) = common(members, "managedBy") {
        d.insert("managedBy".into(), m);
    }
    d.insert("outcome".into(), json!(worst));
    for key in ["commit", "changedBy", "changedVia"] {
        if let Some(v) = common(members, key) {
            d.insert(key.into(), v);
        }
    }
    let workloads: Vec<Value> = details
        .iter()
        .map(|m| {
            let mut m = (*m).clone();
            m.remove("cluster");
            m.remove("managedBy");
            Value::Object(m)
        })
        .collect();
    d.insert("workloads".into(), Value::Array(workloads));
    if !closing.unfinished.is_empty() {
        d.insert("unfinished".into(), json!(closing.unfinished));
    }
    if let Some(at) = members
        .iter()
        .max_by_key(|m| m.timestamp)
        .and_then(|last| last.custom_details.get("finishedAt"))
    {
        d.insert("finishedAt".into(), at.clone());
    }
    let mut event = DeploymentEvent {
        summary,
        timestamp,
        custom_details: d,
        links: Vec::new(),
        user_email: None,
    };
    let mut warnings = Vec::new();
    if let Some(t) = closing.templates {
        let plain = event.clone();
        let context = json!({
            "cluster": cluster,
            "summary": event.summary,
            "outcome": worst,
            "group": owner,
            "owners": [owner],
            "workloads": event.custom_details["workloads"],
            "unfinished": closing.unfinished,
            "finishedAt": event.custom_details.get("finishedAt"),
            "commit": event.custom_details.get("commit"),
            "changedBy": event.custom_details.get("changedBy"),
            "changedVia": event.custom_details.get("changedVia"),
        });
        match t.render(&context) {
            Ok(r) => report::apply(&mut event, r, true),
            Err(e) => warnings.push(e.to_string()),
        }
        let size = serde_json::to_vec(&event).map_or(0, |b| b.len());
        if size > MAX_EVENT_BYTES - 1024 {
            warnings.push(format!(
                "templates made the event of a change {size} bytes (at most {}); it was sent without them",
                MAX_EVENT_BYTES - 1024
            ));
            event = plain;
        }
    }
    (event, warnings)
}

#[cfg(test)]
mod tests;

//! Small text helpers every payload and message shares.

/// Cuts `s` to at most `max` characters, ending with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `" on <cluster>"`, or nothing when the cluster has no name: the end of every summary.
pub fn on_cluster(cluster: &str) -> String {
    if cluster.is_empty() {
        String::new()
    } else {
        format!(" on {cluster}")
    }
}

/// A workload as the ledger and messages name it: `Kind/namespace/name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadRef<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> WorkloadRef<'a> {
    /// Reads `Kind/namespace/name`; None for anything else.
    pub fn parse(workload: &'a str) -> Option<Self> {
        Some(workload)
            .filter(|w| w.splitn(3, '/').count() == 3)
            .map(Self::split)
    }

    /// Reads `Kind/namespace/name`, a missing part empty.
    pub fn split(workload: &'a str) -> Self {
        let mut parts = workload.splitn(3, '/');
        WorkloadRef {
            kind: parts.next().unwrap_or_default(),
            namespace: parts.next().unwrap_or_default(),
            name: parts.next().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_characters_not_bytes() {
        assert_eq!(truncate("äöü", 3), "äöü");
        assert_eq!(truncate("äöüß", 3), "äö…");
    }

    #[test]
    fn parses_only_whole_references() {
        assert_eq!(
            WorkloadRef::parse("Deployment/shop/web"),
            Some(WorkloadRef {
                kind: "Deployment",
                namespace: "shop",
                name: "web"
            })
        );
        assert_eq!(WorkloadRef::parse("IlertPipeline/shop"), None);
        assert_eq!(WorkloadRef::split("IlertPipeline/shop").namespace, "shop");
        assert_eq!(WorkloadRef::split("IlertPipeline/shop").name, "");
        assert_eq!(on_cluster(""), "");
        assert_eq!(on_cluster("prod"), " on prod");
    }
}

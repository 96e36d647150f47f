//! The containers of pods on this node that sent requests: when they last did, and how many
//! were denied.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::audit::AuditNote;

/// The maximum number of containers tracked at once. Past this, the one with the oldest request is dropped.
/// Pods that leave the node are dropped at each listing, so only a node with this many live
/// containers that all send requests reaches it.
const MAX_WORKLOADS: usize = 16 * 1024;

/// Requests of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkloadStats {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub last_request: SystemTime,
    pub requests: u64,
    pub denials: u64,
}

/// Containers by (pod UID, container name).
#[derive(Debug, Default)]
pub(crate) struct Workloads {
    entries: Mutex<HashMap<(String, String), WorkloadStats>>,
}

impl Workloads {
    /// Counts one request of the pod and container in `note`, made at `at`.
    pub(crate) fn record(&self, note: &AuditNote, denied: bool, at: SystemTime) {
        let mut entries = self.lock();
        let key = (note.pod_uid.clone(), note.container.clone());
        if !entries.contains_key(&key) && entries.len() >= MAX_WORKLOADS {
            let oldest = entries
                .iter()
                .min_by_key(|(_, stats)| stats.last_request)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        let stats = entries.entry(key).or_insert_with(|| WorkloadStats {
            namespace: note.namespace.clone(),
            pod: note.pod.clone(),
            pod_uid: note.pod_uid.clone(),
            container: note.container.clone(),
            last_request: at,
            requests: 0,
            denials: 0,
        });
        stats.last_request = at;
        stats.requests += 1;
        if denied {
            stats.denials += 1;
        }
    }

    /// Returns every tracked container, sorted by namespace, pod and container.
    pub(crate) fn list(&self) -> Vec<WorkloadStats> {
        let mut list: Vec<WorkloadStats> = self.lock().values().cloned().collect();
        list.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
        });
        list
    }

    /// Drops the containers of pods for which `present` returns false.
    pub(crate) fn retain_pods(&self, present: impl Fn(&str) -> bool) {
        self.lock().retain(|(pod_uid, _), _| present(pod_uid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), WorkloadStats>> {
        // Each update leaves the map consistent, so a poisoned lock still holds usable state.
        self.entries.lock().unwrap_or_else(|err| err.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn note(pod_uid: &str, container: &str) -> AuditNote {
        AuditNote {
            namespace: "prod".to_string(),
            pod: format!("pod-{pod_uid}"),
            pod_uid: pod_uid.to_string(),
            container: container.to_string(),
            ..AuditNote::default()
        }
    }

    #[test]
    fn counts_requests_and_denials() {
        let workloads = Workloads::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        workloads.record(&note("u1", "app"), false, start);
        workloads.record(&note("u1", "app"), true, start + Duration::from_secs(5));
        workloads.record(&note("u1", "sidecar"), false, start);

        let list = workloads.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].container, "app");
        assert_eq!(list[0].requests, 2);
        assert_eq!(list[0].denials, 1);
        assert_eq!(list[0].last_request, start + Duration::from_secs(5));
        assert_eq!(list[1].container, "sidecar");
        assert_eq!(list[1].denials, 0);
    }

    #[test]
    fn retain_drops_departed_pods() {
        let workloads = Workloads::default();
        workloads.record(&note("u1", "app"), false, SystemTime::now());
        workloads.record(&note("u2", "app"), false, SystemTime::now());
        workloads.retain_pods(|uid| uid == "u2");
        let list = workloads.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].pod_uid, "u2");
    }
}

//! Pod UID and container ID from the content of `/proc/PID/cgroup`.
//!
//! Each line of that file is `hierarchy-ID:controller-list:cgroup-path` (see cgroups(7)). Cgroup
//! v1 hosts list one line per hierarchy, cgroup v2 hosts list one `0::path` line, and hybrid
//! hosts list both. The kubelet names a pod's cgroup after its UID, and the container runtime
//! names each container's cgroup after the container ID. The paths this module recognizes:
//!
//! | driver | example path (burstable pod) |
//! | --- | --- |
//! | cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | cgroupfs, CRI-O | `/kubepods/burstable/pod<uid>/crio-<id>` |
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | systemd, CRI-O | `.../kubepods-burstable-pod<uid_>.slice/crio-<id>.scope` |
//! | systemd, Docker | `.../kubepods-burstable-pod<uid_>.slice/docker-<id>.scope` |
//!
//! `<uid>` is the dashed pod UID, `<uid_>` the same UID with underscores (systemd reserves `-`
//! for the slice hierarchy), and `<id>` the 64-hex container ID. Guaranteed pods sit directly
//! under `kubepods` (`kubepods-pod<uid_>.slice`), besteffort and burstable pods one level down.
//! Any prefix may come before `kubepods`: a cgroup root such as `/kubelet` (kind names its
//! slices `kubelet-kubepods-...`) or a nesting runtime (`/docker/<id>/kubepods/...`).
//!
//! The kernel prints each path relative to the reader's cgroup namespace root, so an agent
//! running in a pod with a private cgroup namespace reads the paths of other pods as
//! `/../../kubepods-besteffort-pod<uid_>.slice/...` or `/../../pod<uid>/<id>`. A cgroupfs pod
//! directory is therefore accepted under `kubepods`, under `kubepods/burstable` or
//! `kubepods/besteffort`, or directly under `..`.

use std::fmt;

/// Length of a pod UID in its dashed form, `8-4-4-4-12` hex digits.
// NOTE: static pods are not recognized. The kubelet names their cgroups after a 32-hex hash of
// the manifest, which is not the UID of their mirror pod in the API.
const POD_UID_LEN: usize = 36;
/// Length of a container ID: 32 bytes in hex.
const CONTAINER_ID_LEN: usize = 64;
/// Container cgroup names of the systemd driver: `<prefix><id>.scope`.
const SCOPE_PREFIXES: [&str; 3] = ["cri-containerd-", "crio-", "docker-"];

/// The pod, and the container within it, that a cgroup path belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodContainer {
    /// Pod UID in the canonical dashed lowercase form, as in the pod's `metadata.uid`.
    pub pod_uid: String,
    /// Container ID as 64 lowercase hex digits without a runtime prefix, or `None` when the
    /// process sits in the pod's own cgroup rather than in one of its containers.
    pub container_id: Option<String>,
}

impl fmt::Display for PodContainer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.container_id {
            Some(container_id) => {
                write!(formatter, "pod {} container {container_id}", self.pod_uid)
            }
            None => write!(formatter, "pod {} (no container)", self.pod_uid),
        }
    }
}

/// A cgroup file whose lines point at different pods or containers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cgroup hierarchies disagree on the caller: one names {first}, another {second}")]
pub struct CgroupConflict {
    pub first: PodContainer,
    pub second: PodContainer,
}

/// Parses the content of a `/proc/PID/cgroup` file into the pod and container it names.
///
/// Returns `Ok(None)` when no line is inside a pod (host services, empty files, malformed
/// lines). Lines outside any pod are skipped, because a hybrid host lists systemd's own
/// hierarchy beside the ones the runtime set up. Every line that is inside a pod must name the
/// same pod and the same container, otherwise the result is a [`CgroupConflict`] rather than
/// a guess.
pub fn parse_cgroup_file(text: &str) -> Result<Option<PodContainer>, CgroupConflict> {
    let mut found: Option<PodContainer> = None;
    for line in text.lines() {
        let Some(path) = cgroup_path(line) else {
            continue;
        };
        let Some(current) = parse_cgroup_path(path) else {
            continue;
        };
        match &found {
            None => found = Some(current),
            Some(first) if *first == current => {}
            Some(first) => {
                return Err(CgroupConflict {
                    first: first.clone(),
                    second: current,
                })
            }
        }
    }
    Ok(found)
}

/// Returns the path field of one `hierarchy-ID:controller-list:cgroup-path` line.
fn cgroup_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let _controllers = fields.next()?;
    let path = fields.next()?;
    if hierarchy.is_empty() || !hierarchy.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(path)
}

/// Parses one cgroup path, such as `/kubepods/besteffort/pod<uid>/<id>`.
pub fn parse_cgroup_path(path: &str) -> Option<PodContainer> {
    let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    for (index, component) in components.iter().enumerate() {
        let pod_uid = systemd_pod_uid(component)
            .or_else(|| cgroupfs_pod_uid(&components[..index], component));
        let Some(pod_uid) = pod_uid else {
            continue;
        };

        // The pod's cgroup itself contains the process, or the next component is a container.
        // Deeper components are sub-cgroups that the container created inside its own.
        let container_id = match components.get(index + 1) {
            None => None,
            Some(next) => Some(container_id(next)?),
        };
        return Some(PodContainer {
            pod_uid,
            container_id,
        });
    }
    None
}

/// Reads the UID from a systemd pod slice, `[<prefix>-]kubepods[-<qos>]-pod<uid_>.slice`.
fn systemd_pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice")?;
    let (parent, uid) = name.rsplit_once("-pod")?;
    let qos_parent = parent
        .strip_suffix("-burstable")
        .or_else(|| parent.strip_suffix("-besteffort"))
        .unwrap_or(parent);
    let prefix = qos_parent.strip_suffix("kubepods")?;
    if !(prefix.is_empty() || prefix.ends_with('-')) {
        return None;
    }
    canonical_pod_uid(uid, b'_')
}

/// Reads the UID from a cgroupfs pod directory `pod<uid>`, given the components above it.
fn cgroupfs_pod_uid(parents: &[&str], component: &str) -> Option<String> {
    let uid = component.strip_prefix("pod")?;
    let parent_is_kubepods = matches!(
        parents,
        [.., "kubepods" | ".."] | [.., "kubepods" | "..", "burstable" | "besteffort"]
    );
    if !parent_is_kubepods {
        return None;
    }
    canonical_pod_uid(uid, b'-')
}

/// Checks the `8-4-4-4-12` hex layout with `separator` between groups and returns the dashed
/// lowercase form.
fn canonical_pod_uid(uid: &str, separator: u8) -> Option<String> {
    if uid.len() != POD_UID_LEN {
        return None;
    }
    let mut canonical = String::with_capacity(POD_UID_LEN);
    for (position, byte) in uid.bytes().enumerate() {
        if matches!(position, 8 | 13 | 18 | 23) {
            if byte != separator {
                return None;
            }
            canonical.push('-');
        } else if byte.is_ascii_hexdigit() {
            canonical.push(char::from(byte.to_ascii_lowercase()));
        } else {
            return None;
        }
    }
    Some(canonical)
}

/// Reads the container ID from a container cgroup: `<id>` or `crio-<id>` (cgroupfs driver),
/// or `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` (systemd driver).
///
/// CRI-O's monitor process sits in `crio-conmon-<id>.scope`, which is rejected here because
/// `conmon-<id>` is not a container ID.
fn container_id(component: &str) -> Option<String> {
    let bare = match component.strip_suffix(".scope") {
        Some(scope) => SCOPE_PREFIXES
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?,
        None => component.strip_prefix("crio-").unwrap_or(component),
    };
    let is_hex_id = bare.len() == CONTAINER_ID_LEN && bare.bytes().all(|b| b.is_ascii_hexdigit());
    is_hex_id.then(|| bare.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f9e4c52-7a1b-4d3e-9c2a-5b6d7e8f9a0b";
    const UID_UNDERSCORES: &str = "0f9e4c52_7a1b_4d3e_9c2a_5b6d7e8f9a0b";
    const ID: &str = "3f4e8a1b2c9d0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    fn with_container() -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: UID.to_owned(),
            container_id: Some(ID.to_owned()),
        })
    }

    fn pod_only() -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: UID.to_owned(),
            container_id: None,
        })
    }

    /// Replaces `UID`, `UID_` and `ID` in a template with the test values.
    fn fill(template: &str) -> String {
        template
            .replace("UID_", UID_UNDERSCORES)
            .replace("UID", UID)
            .replace("ID", ID)
    }

    fn v1_file(path: &str) -> String {
        let controllers = [
            "12:perf_event",
            "11:hugetlb",
            "10:cpuset",
            "9:memory",
            "8:blkio",
            "7:net_cls,net_prio",
            "6:pids",
            "5:devices",
            "4:cpu,cpuacct",
            "3:freezer",
            "2:rdma",
            "1:name=systemd",
        ];
        let mut text = String::new();
        for controller in controllers {
            let line_path = if controller == "2:rdma" { "/" } else { path };
            text.push_str(&format!("{controller}:{line_path}\n"));
        }
        text
    }

    #[test]
    fn v2_paths_of_each_runtime_and_driver() {
        let cases = [
            // containerd, cgroupfs driver, each QoS class.
            ("0::/kubepods/burstable/podUID/ID", with_container()),
            ("0::/kubepods/besteffort/podUID/ID", with_container()),
            ("0::/kubepods/podUID/ID", with_container()),
            // CRI-O, cgroupfs driver.
            ("0::/kubepods/burstable/podUID/crio-ID", with_container()),
            // systemd driver, each runtime and QoS class.
            (
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podUID_.slice/\
                 cri-containerd-ID.scope",
                with_container(),
            ),
            (
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podUID_.slice/\
                 crio-ID.scope",
                with_container(),
            ),
            (
                "0::/kubepods.slice/kubepods-podUID_.slice/docker-ID.scope",
                with_container(),
            ),
            // CRI-O on cgroup v2 may run the container's processes in a sub-cgroup.
            (
                "0::/kubepods.slice/kubepods-podUID_.slice/crio-ID.scope/container",
                with_container(),
            ),
        ];
        for (template, expected) in cases {
            let text = fill(template) + "\n";
            assert_eq!(parse_cgroup_file(&text), Ok(expected), "line {template}");
        }
    }

    #[test]
    fn prefixes_before_kubepods() {
        let cases = [
            // kind with the systemd driver: cgroup root /kubelet.
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-podUID_.slice/cri-containerd-ID.scope",
            // kind with the cgroupfs driver.
            "0::/kubelet/kubepods/burstable/podUID/ID",
            // A cluster nested in a Docker container.
            "0::/docker/ID/kubepods/besteffort/podUID/ID",
            // Paths relative to a private cgroup namespace of the reader.
            "0::/../../kubepods-besteffort-podUID_.slice/cri-containerd-ID.scope",
            "0::/../../../podUID/ID",
            "0::/../../../besteffort/podUID/ID",
        ];
        for template in cases {
            let text = fill(template);
            assert_eq!(
                parse_cgroup_file(&text),
                Ok(with_container()),
                "line {template}"
            );
        }
    }

    #[test]
    fn pod_cgroup_without_container() {
        let cases = [
            "0::/kubepods/burstable/podUID",
            "0::/kubepods/podUID/",
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podUID_.slice",
        ];
        for template in cases {
            let text = fill(template);
            assert_eq!(parse_cgroup_file(&text), Ok(pod_only()), "line {template}");
        }
    }

    #[test]
    fn v1_file_with_many_hierarchies() {
        let cgroupfs = v1_file(&fill("/kubepods/besteffort/podUID/ID"));
        assert_eq!(parse_cgroup_file(&cgroupfs), Ok(with_container()));

        let systemd = v1_file(&fill(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podUID_.slice/\
             docker-ID.scope",
        ));
        assert_eq!(parse_cgroup_file(&systemd), Ok(with_container()));
    }

    #[test]
    fn hybrid_file_skips_host_unified_line() {
        let mut text = v1_file(&fill(
            "/kubepods.slice/kubepods-podUID_.slice/cri-containerd-ID.scope",
        ));
        text.push_str("0::/system.slice/containerd.service\n");
        assert_eq!(parse_cgroup_file(&text), Ok(with_container()));
    }

    #[test]
    fn uppercase_ids_become_lowercase() {
        let text = format!(
            "0::/kubepods/pod{}/{}",
            UID.to_ascii_uppercase(),
            ID.to_ascii_uppercase()
        );
        assert_eq!(parse_cgroup_file(&text), Ok(with_container()));
    }

    #[test]
    fn lines_outside_pods_do_not_match() {
        let cases = [
            // Host services and sessions.
            "0::/system.slice/sshd.service",
            "0::/user.slice/user-1000.slice/session-3.scope",
            "0::/",
            "1:name=systemd:/system.slice/kubelet.service",
            // CRI-O's monitor process is no container.
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podUID_.slice/\
             crio-conmon-ID.scope",
            "0::/kubepods/burstable/podUID/crio-conmon-ID",
            // Malformed UIDs: short, long, non-hex, wrong separator for the driver.
            "0::/kubepods/burstable/pod0f9e4c52-7a1b-4d3e-9c2a-5b6d7e8f9a0/ID",
            "0::/kubepods/burstable/pod0f9e4c52-7a1b-4d3e-9c2a-5b6d7e8f9a0b1/ID",
            "0::/kubepods/burstable/pod0f9e4c52-7a1b-4d3e-9c2a-5b6d7e8f9a0g/ID",
            "0::/kubepods/burstable/podUID_/ID",
            "0::/kubepods.slice/kubepods-podUID.slice/cri-containerd-ID.scope",
            "0::/kubepods/burstable/pod0f9e4c527a1b4d3e9c2a5b6d7e8f9a0b/ID",
            // Malformed container IDs and unknown runtime prefixes.
            "0::/kubepods/burstable/podUID/3f4e8a1b",
            "0::/kubepods/burstable/podUID/IDff",
            "0::/kubepods.slice/kubepods-podUID_.slice/containerd-ID.scope",
            "0::/kubepods.slice/kubepods-podUID_.slice/cri-containerd-ID",
            // A `pod` word elsewhere in the path.
            "0::/user.slice/podUID/ID",
            "0::/system.slice/podman-ID.scope",
            "0::/kubepods/guaranteed/podUID/ID",
            "0::/kubepods.slice/notkubepods-podUID_.slice/cri-containerd-ID.scope",
            "0::/kubepods.slice/kubepods-other-podUID_.slice/cri-containerd-ID.scope",
            "0::/machine.slice/pod-UID_.slice/ID",
            // Lines that are not `hierarchy:controllers:path`.
            "/kubepods/burstable/podUID/ID",
            "x::/kubepods/burstable/podUID/ID",
            ":cpu:/kubepods/burstable/podUID/ID",
        ];
        for template in cases {
            let text = fill(template);
            assert_eq!(parse_cgroup_file(&text), Ok(None), "line {template}");
        }
    }

    #[test]
    fn empty_file_has_no_pod() {
        assert_eq!(parse_cgroup_file(""), Ok(None));
        assert_eq!(parse_cgroup_file("\n\n"), Ok(None));
    }

    #[test]
    fn disagreeing_lines_are_a_conflict() {
        let other_uid = "11111111-2222-4333-8444-555555555555";
        let text = fill(&format!(
            "2:memory:/kubepods/besteffort/podUID/ID\n1:cpu:/kubepods/besteffort/pod{other_uid}/ID\n"
        ));
        let conflict = parse_cgroup_file(&text).unwrap_err();
        assert_eq!(conflict.first.pod_uid, UID);
        assert_eq!(conflict.second.pod_uid, other_uid);

        // The pod's own cgroup on one hierarchy and a container on another also disagree.
        let text = fill("2:memory:/kubepods/podUID/ID\n1:cpu:/kubepods/podUID\n");
        let conflict = parse_cgroup_file(&text).unwrap_err();
        assert_eq!(conflict.first, with_container().unwrap());
        assert_eq!(conflict.second, pod_only().unwrap());
        assert_eq!(
            conflict.to_string(),
            format!(
                "cgroup hierarchies disagree on the caller: one names pod {UID} container {ID}, \
                 another pod {UID} (no container)"
            )
        );
    }
}

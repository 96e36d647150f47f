//! Node mode: one agent per Kubernetes node serves the processes of every pod on it.
//!
//! The agent learns who is calling from the kernel: the socket peer, pinned with a pidfd, and
//! its cgroup. It finds the pod in a watch of this node's pods, checks the pod's opt-in and the
//! references its spec declares, and reads Vault with the pod's own service account.
//!
//! - [`settings`]: the `[node]` table of the config file.
//! - [`annotations`]: per-pod settings from `envproxy.dev/*` annotations.
//! - [`policy`]: whether a container may read a reference, and why not.
//! - `container_env`: the env values a container's spec declares, as the kubelet expands them.
//! - [`token_claims`]: checks of a pod's projected service-account token before a Vault login.
//! - [`cgroup`]: pod UID and container ID from `/proc/PID/cgroup`.
//! - [`caller`]: the connected process, pinned with a pidfd.
//! - [`proc_root`]: small files read inside a caller's root filesystem.
//! - [`pods`]: the watch of this node's pods, by UID and container ID.
//! - [`identities`]: one Vault session per pod identity, shared by the pods that have it.
//! - `serve`: the response to each request in node mode.

pub mod annotations;
pub mod caller;
pub mod cgroup;
mod container_env;
pub mod identities;
pub mod pods;
pub mod policy;
pub mod proc_root;
pub(crate) mod serve;
pub mod settings;
pub mod token_claims;

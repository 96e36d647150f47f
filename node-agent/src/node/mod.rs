//! Node mode: one agent per Kubernetes node serves the processes of every pod on it.
//!
//! The agent learns who is calling from the kernel (the socket peer, pinned with a pidfd, and
//! its cgroup), finds the pod in a watch of this node's pods, checks the pod's opt-in and the
//! references its spec declares, and reads Vault with the pod's own service account.
//!
//! - [`pods`]: the watch of this node's pods, by pod UID and container ID.

pub mod pods;

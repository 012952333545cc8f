//! What a pod's name says about its training job when nothing better is
//! known: the run (the job the pod belongs to) and the rank. The cluster
//! metadata path (owner references, Kubeflow/JobSet/Volcano labels) refines
//! this; path metadata alone falls back to these rules.
//!
//! `train-llama-0` → run `train-llama`, rank `0`;
//! `bert-ft-worker-3` → run `bert-ft`, rank `3`;
//! `bert-ft-master-0` → run `bert-ft`, rank `0`;
//! `vllm-7d9f8c6b5-x2k4q` (a Deployment pod) → run `vllm`, no rank.

/// The run and rank a pod name suggests.
pub fn run_and_rank(pod: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 2 {
        return (None, None);
    }
    // Deployment / ReplicaSet pods: <name>-<template hash>-<5 chars>.
    let is_hash = |s: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().any(|b| b.is_ascii_digit())
    };
    if parts.len() >= 3 && is_hash(parts[parts.len() - 1], 5..=5) && is_hash(parts[parts.len() - 2], 8..=10) {
        return (Some(parts[..parts.len() - 2].join("-")), None);
    }
    let last = parts[parts.len() - 1];
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        let mut head = &parts[..parts.len() - 1];
        if head.len() >= 2
            && matches!(
                head[head.len() - 1],
                "worker" | "master" | "launcher" | "chief" | "ps" | "evaluator" | "head" | "replica"
            )
        {
            head = &head[..head.len() - 1];
        }
        return (Some(head.join("-")), Some(last.to_string()));
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        let own = |r: (Option<String>, Option<String>)| (r.0, r.1);
        assert_eq!(own(run_and_rank("train-llama-0")), (Some("train-llama".into()), Some("0".into())));
        assert_eq!(own(run_and_rank("bert-ft-worker-3")), (Some("bert-ft".into()), Some("3".into())));
        assert_eq!(own(run_and_rank("bert-ft-master-0")), (Some("bert-ft".into()), Some("0".into())));
        assert_eq!(own(run_and_rank("vllm-llama-7d9f8c6b5-x2k4q")), (Some("vllm-llama".into()), None));
        assert_eq!(own(run_and_rank("gpu-feature-discovery-x7k2p")), (None, None));
        assert_eq!(own(run_and_rank("standalone")), (None, None));
    }
}

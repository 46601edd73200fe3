//! `bpf-load-retry-loop`: a CNI agent's bundled loader (a copy of `ip`, with its libbpf,
//! running as `calico-felix`) tries to load an XDP object the kernel refuses, and tries again
//! and again, as Calico 3.27.3's bundled bpftool did on 5.4 kernels (field report 4; there
//! BPF_BTF_LOAD failed with EINVAL). Here the program is the lab's `lab_xdp_bad_ctx` fixture,
//! which the verifier rejects (an out-of-range context access): BPF_PROG_LOAD fails every
//! time, before any attach is requested. Nothing is ever attached.

use std::{path::PathBuf, time::Duration};

use super::Scenario;
use crate::{
    analyze::Finding,
    lab::{
        fixtures,
        netns::{ip, Lab},
        xdp::{self, Mode},
    },
};

pub struct BpfLoadRetryLoop;

const LOADER: &str = "calico-felix";
/// The node's uplink, the device the loader wants its XDP prefilter on.
const DEVICE: &str = "eth0";
const ATTEMPTS: usize = 4;
const INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Topology {
    pub netns: String,
    pub device: String,
    pub loader: PathBuf,
    pub object: PathBuf,
}

impl Scenario for BpfLoadRetryLoop {
    type Topology = Topology;

    fn name(&self) -> &'static str {
        "bpf-load-retry-loop"
    }

    fn about(&self) -> &'static str {
        "calico-felix's loader retries an XDP object the kernel refuses to load (verifier error), again and again"
    }

    fn expected_rule(&self) -> &'static str {
        "xdp-attach-failed"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Topology> {
        let object = fixtures::write(lab)?;
        let netns = lab.add_netns("bpf-retry")?;
        // Left down: the load fails before any attach, and a quiet device keeps IPv6's own
        // multicast reports out of this scenario's trace.
        ip(&["-n", &netns, "link", "add", DEVICE, "type", "veth", "peer", "name", "uplink-peer"])?;
        // The object itself loads here (the failure is in one program, not in the toolchain).
        xdp::check_loader(&netns, DEVICE, &object, fixtures::XDP_PASS)?;
        let loader = lab.actor_binary("ip", LOADER)?;
        Ok(Topology { netns, device: DEVICE.into(), loader, object })
    }

    fn trigger(&self, t: &Topology) -> anyhow::Result<Vec<String>> {
        // Fails on purpose, every time; what matters is the trace.
        let attempts = xdp::retry(ATTEMPTS, INTERVAL, || {
            xdp::attach(&t.loader, &t.netns, &t.device, Mode::Generic, &t.object, fixtures::XDP_BAD_CTX)
        })?;
        let mut lines = xdp::attempt_lines(LOADER, &attempts);
        if let Some(prog) = xdp::attached(&t.netns, &t.device)? {
            lines.push(format!("unexpected: {} now has XDP program {prog}", t.device));
        }
        Ok(lines)
    }

    fn verify(&self, _lab: &Lab, _t: &Topology, findings: &[Finding]) -> Vec<String> {
        let by_loader: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.rule == self.expected_rule() && f.actor.as_ref().is_some_and(|a| a.comm == LOADER))
            .collect();
        if by_loader.is_empty() {
            return vec![format!("no `{}` finding naming {LOADER}", self.expected_rule())];
        }
        let says_load = |f: &Finding| f.summary.to_lowercase().contains("load");
        if by_loader.iter().any(|f| f.count >= ATTEMPTS as u64 && says_load(f)) {
            return vec![];
        }
        by_loader
            .iter()
            .map(|f| {
                format!(
                    "the `{}` finding naming {LOADER} should count the {ATTEMPTS} attempts and say that the program \
                     failed to load; it counts {} and says: {}",
                    self.expected_rule(),
                    f.count,
                    f.summary
                )
            })
            .collect()
    }
}

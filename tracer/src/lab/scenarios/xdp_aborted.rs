//! `xdp-aborted`: an XDP program that returns XDP_ABORTED (the lab's own fixture, as a
//! broken datapath program would) is attached to the server side of a veth pair (natively:
//! veth has native XDP), and the client pings the server: every packet is aborted, dropped
//! with an `xdp:xdp_exception` (field report 4: "XDP errors", unstable pod connectivity).
//! The program goes away with the lab namespace that holds the veth.

use std::{path::PathBuf, process::Command};

use anyhow::Context;

use super::Scenario;
use crate::{
    analyze::Finding,
    decode::Event,
    lab::{
        degraded::{Blind, Degraded, Own},
        fixtures,
        netns::{ifindex_in, ip, iproute2_ip, Lab},
        topology::NodePair,
        traffic,
        xdp::{self, Mode},
    },
};

pub struct XdpAborted;

/// Echo requests sent to each of the server's addresses (IPv4 and IPv6).
const PINGS: u16 = 4;

#[derive(Debug, Clone)]
pub struct Topology {
    pub pair: NodePair,
    pub object: PathBuf,
}

impl Scenario for XdpAborted {
    type Topology = Topology;

    fn name(&self) -> &'static str {
        "xdp-aborted"
    }

    fn about(&self) -> &'static str {
        "an XDP program on a veth returns XDP_ABORTED: every packet to the server is dropped with an exception"
    }

    fn expected_rule(&self) -> &'static str {
        "xdp-aborted"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Topology> {
        let object = fixtures::write(lab)?;
        let pair = NodePair::build_as(lab, "xdp-peer", "xdp-host")?;
        let (client, server) = (&pair.client, &pair.server);
        xdp::check_loader(&server.netns, &server.dev, &object, fixtures::XDP_PASS)?;
        // Neighbours known in advance: with the program attached, ARP and neighbour
        // solicitations would be aborted too, and the pings would never leave the client.
        let mac = mac_of(&server.netns, &server.dev)?;
        for addr in [server.v4, server.v6] {
            let addr = addr.to_string();
            ip(&[
                "-n",
                &client.netns,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac,
                "dev",
                &client.dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(Topology { pair, object })
    }

    fn trigger(&self, t: &Topology) -> anyhow::Result<Vec<String>> {
        let (client, server) = (&t.pair.client, &t.pair.server);
        let ip = iproute2_ip();
        let mut lines = Vec::new();
        // Native first (veth has it); generic where this veth driver lacks it.
        let mut attach = xdp::attach(&ip, &server.netns, &server.dev, Mode::Native, &t.object, fixtures::XDP_ABORTED)?;
        if !attach.ok {
            lines.push(format!("`{}`: {}; falling back to generic XDP", attach.command, attach.said()));
            attach = xdp::attach(&ip, &server.netns, &server.dev, Mode::Generic, &t.object, fixtures::XDP_ABORTED)?;
        }
        anyhow::ensure!(attach.ok, "`{}` failed: {}", attach.command, attach.said());
        let prog = xdp::attached(&server.netns, &server.dev)?.unwrap_or_else(|| "nothing".into());
        lines.push(format!("`{}`: {} now has {prog}", attach.command, server.dev));
        traffic::ping(&client.netns, server.v4, PINGS)?;
        traffic::ping(&client.netns, server.v6, PINGS)?;
        lines.push(format!(
            "client: sent {PINGS} echo requests each to {} and {} over {}; the server's XDP program aborts them",
            server.v4, server.v6, client.dev
        ));
        Ok(lines)
    }

    fn verify(&self, lab: &Lab, t: &Topology, findings: &[Finding]) -> Vec<String> {
        let server = &t.pair.server;
        let netns = lab.inode(&server.netns);
        let sent = u64::from(PINGS) * 2;
        let on_device: Vec<&Finding> = findings
            .iter()
            .filter(|f| {
                f.rule == self.expected_rule()
                    && f.place.device.as_deref() == Some(server.dev.as_str())
                    && f.place.netns == netns
            })
            .collect();
        if on_device.is_empty() {
            return vec![format!("no `{}` finding on {} in the server's namespace", self.expected_rule(), server.dev)];
        }
        if on_device.iter().all(|f| f.count < sent) {
            let counts: Vec<String> = on_device.iter().map(|f| f.count.to_string()).collect();
            return vec![format!(
                "the `{}` finding on {} counts {} aborted packets, fewer than the {sent} sent",
                self.expected_rule(),
                server.dev,
                counts.join(", ")
            )];
        }
        vec![]
    }

    /// Without BTF XDP exceptions carry a program id and an ifindex only: the finding must be
    /// about the lab's own program (the id `ip` shows on the server's veth) on that veth's
    /// ifindex, during the trigger, counting every packet sent.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        t: &Topology,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.xdp_places {
            return None;
        }
        let server = &t.pair.server;
        let rule = self.expected_rule();
        let sent = u64::from(PINGS) * 2;
        let mut result = Degraded::default();
        let ifindex = ifindex_in(&server.netns, &server.dev);
        let prog = xdp::attached(&server.netns, &server.dev).map(|a| a.as_deref().and_then(prog_id));
        let (ifindex, prog) = match (ifindex, prog) {
            (Ok(i), Ok(Some(p))) => (i, p),
            (i, p) => {
                result.problems.push(format!(
                    "cannot tie the exceptions to the server's program: ifindex {i:?}, program {p:?} on {}",
                    server.dev
                ));
                return Some(result);
            }
        };
        let ours = |e: &Event| {
            matches!(e, Event::XdpException(x) if x.ifindex == ifindex && x.prog_id == prog
                && own.in_window(x.ts_ns))
        };
        if !findings.iter().any(|f| f.rule == rule && f.count >= sent && f.evidence.iter().any(ours)) {
            result.problems.push(format!(
                "no `{rule}` finding counting at least the {sent} packets sent, for the lab's program id {prog} on \
                 ifindex {ifindex} ({}) during the trigger",
                server.dev
            ));
        }
        result.not_checked(format!(
            "the namespace and name of the device (no BTF: exceptions carry a program id and an ifindex; {} was \
             matched by its ifindex {ifindex} and program id {prog})",
            server.dev
        ));
        Some(result)
    }
}

/// The program id in what `ip -d link show` says of an XDP program (`… prog/xdp id 12 …`).
fn prog_id(attached: &str) -> Option<u32> {
    let mut words = attached.split_whitespace();
    words.find(|w| *w == "id")?;
    words.next()?.parse().ok()
}

/// The MAC address of `dev` in `netns`.
fn mac_of(netns: &str, dev: &str) -> anyhow::Result<String> {
    let out = Command::new(iproute2_ip()).args(["-n", netns, "-o", "link", "show", "dev", dev]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether").and_then(|_| words.next()).map(str::to_string).with_context(|| {
        format!("no MAC address for {dev} in {netns}: {}", String::from_utf8_lossy(&out.stderr).trim())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_program_id_is_read_from_what_ip_shows() {
        let shown = "xdp prog/xdp id 373 name lab_xdp_aborted tag 59f4a931744dcdc6 jited";
        assert_eq!(super::prog_id(shown), Some(373));
        assert_eq!(super::prog_id("xdp (program unknown)"), None);
    }
}

//! `dptrace check`: what this kernel offers dptrace and the CNI. For every hook family,
//! each backend is really attached and detached (probing, never version numbers), so the
//! report says what a session would get and what it could not see.

use serde_json::json;

use crate::{
    commands::{require_root, Outcome},
    kernel::{
        features::{probe_features, FeatureReport, Problem, Support},
        KernelFacts,
    },
    output,
    probes::{drops::DropBackend, BackendProbe, Probes},
};

pub async fn check(json: bool) -> anyhow::Result<Outcome> {
    require_root()?;
    let facts = KernelFacts::probe()?;
    // crictl may take its timeout: it runs while the backends are probed.
    let kubernetes = std::thread::spawn(crate::pods::KubernetesStatus::read);
    let kernel = facts.summary();
    let backends = Probes::survey(&facts);
    let features = probe_features();
    let program_types = program_types();
    // The backend a session gets: the first of the chain that attached.
    let mut chosen: Vec<&BackendProbe> = DropBackend::CHAIN
        .iter()
        .filter_map(|b| backends.iter().find(|p| p.family == "drops" && p.backend == b.name() && p.available))
        .take(1)
        .collect();
    chosen.extend(backends.iter().find(|p| p.family == "links" && p.available));
    chosen.extend(
        crate::probes::netfilter::NetfilterBackend::CHAIN
            .iter()
            .filter_map(|b| backends.iter().find(|p| p.family == "netfilter" && p.backend == b.name() && p.available))
            .take(1),
    );
    chosen.extend(backends.iter().find(|p| p.family == "xdp" && p.available));
    chosen.extend(backends.iter().find(|p| p.family == "path" && p.available));
    let mut problems = attach_method_notes(&backends);
    problems.extend(features.problems.iter().cloned());
    if chosen.is_empty() {
        problems.push(Problem {
            severity: "error",
            feature: "drops".into(),
            summary: "no backend can observe packet drops on this kernel".into(),
            remediation: "dptrace needs the skb:kfree_skb tracepoint (CONFIG_TRACEPOINTS), or kprobes/fentry on the drop function; run as root".into(),
        });
    }
    let failing = problems.iter().any(|p| p.severity != "info");
    let fields: Vec<_> = facts
        .kfree_skb
        .as_ref()
        .map(|f| f.fields.iter().filter(|f| !f.name.starts_with("common_")).collect())
        .unwrap_or_default();
    let kubernetes = kubernetes.join().ok();
    let value = json!({
        "kubernetes": kubernetes,
        "kernel": kernel,
        "tracefs": facts.tracefs.root(),
        "tracefs_mounted_by_dptrace": facts.tracefs.mounted_by_us,
        "btf_missing": facts.btf_missing,
        "kfree_skb_fields": fields.iter().map(|f| json!({"name": f.name, "offset": f.offset, "size": f.size})).collect::<Vec<_>>(),
        "hooks": chosen.iter().map(|c| json!({"family": c.family, "backend_id": c.backend, "backend": c.detail, "coverage": c.coverage})).collect::<Vec<_>>(),
        "backends": backends,
        "features": features,
        "program_types": program_types.iter().map(|(name, ok)| (name.to_string(), json!(ok))).collect::<serde_json::Map<_, _>>(),
        "problems": problems,
    });
    let mut text = format!("kernel {}\n", kernel.release);
    let mounted = if facts.tracefs.mounted_by_us { " (mounted by dptrace just now)" } else { "" };
    text.push_str(&format!("  tracefs:            {}{mounted}\n", facts.tracefs.root().display()));
    let btf = facts.btf_missing.as_deref().map(|w| format!("missing ({w})")).unwrap_or_else(|| "yes".into());
    text.push_str(&format!("  BTF:                {btf}\n"));
    text.push_str(&format!("  drop reason names:  {}\n", kernel.drop_reason_names));
    text.push_str(&format!(
        "  kallsyms:           {}\n",
        if kernel.kallsyms { "yes" } else { "no (addresses shown raw)" }
    ));
    if let Some(k) = &kubernetes {
        text.push_str(&format!("  kubernetes:         {}\n", k.line()));
    }
    match &facts.kfree_skb {
        Ok(_) => {
            let layout: Vec<String> = fields.iter().map(|f| format!("{}@{}", f.name, f.offset)).collect();
            text.push_str(&format!("  skb:kfree_skb:      {}\n", layout.join(" ")));
        }
        Err(why) => text.push_str(&format!("  skb:kfree_skb:      missing ({why})\n")),
    }
    let listed =
        |want: bool| program_types.iter().filter(|(_, ok)| *ok == want).map(|(n, _)| *n).collect::<Vec<_>>().join(" ");
    text.push_str(&format!("  BPF program types:  {} (not: {})\n", listed(true), listed(false)));
    text.push_str("hook families (backends best first; * = what a session uses)\n");
    for probe in &backends {
        let mark =
            if chosen.iter().any(|c| c.family == probe.family && c.backend == probe.backend) { "*" } else { " " };
        let state = if probe.available { "ok  " } else { "no  " };
        text.push_str(&format!("  {mark} {:<9} {:<20} {state} {}\n", probe.family, probe.backend, probe.detail));
        let gaps = probe.coverage.as_ref().and_then(|c| c["gaps"].as_array().cloned()).unwrap_or_default();
        if mark == "*" || probe.family != "drops" {
            for gap in gaps.iter().filter_map(|g| g.as_str()) {
                text.push_str(&format!("                not covered: {gap}\n"));
            }
        }
    }
    text.push_str(&features_text(&features));
    if !problems.is_empty() {
        text.push_str("problems\n");
        for p in &problems {
            text.push_str(&format!("  [{}] {}: {}\n      fix: {}\n", p.severity, p.feature, p.summary, p.remediation));
        }
    }
    output::sink(json, false).record("check", value, text.trim_end());
    Ok(if failing { Outcome::Problem } else { Outcome::Ok })
}

/// What missing attach methods mean for the user (info: dptrace falls back, but sees less).
fn attach_method_notes(backends: &[BackendProbe]) -> Vec<Problem> {
    let unavailable = |name: &str| backends.iter().find(|b| b.backend == name && !b.available);
    let mut notes = Vec::new();
    if let Some(kprobe) = unavailable("kprobe") {
        notes.push(Problem {
            severity: "info",
            feature: "kprobes".into(),
            summary: format!("kprobes unavailable ({}): dptrace works from tracepoints and userspace sources; function-level detail that only kprobes give (e.g. which iptables table and chain dropped a packet, where a link request failed) is not available", kprobe.detail),
            remediation: "nothing needed for dptrace; for more detail use a kernel with CONFIG_KPROBES=y".into(),
        });
    }
    if let Some(fentry) = unavailable("fentry") {
        notes.push(Problem {
            severity: "info",
            feature: "fentry".into(),
            summary: format!("fentry/fexit unavailable ({}): the cheapest function hooks are unavailable; dptrace uses tracepoints (and kprobes where they exist) instead", fentry.detail),
            remediation: "nothing needed for dptrace; fentry needs BTF (CONFIG_DEBUG_INFO_BTF) and BPF trampolines (x86_64/arm64, 5.5+)".into(),
        });
    }
    notes
}

/// Which BPF program and map types this kernel loads (aya loads a minimal program of each).
fn program_types() -> Vec<(&'static str, bool)> {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_map_supported, is_program_supported},
    };
    let programs = [
        ("tracepoint", ProgramType::TracePoint),
        ("raw_tracepoint", ProgramType::RawTracePoint),
        ("kprobe", ProgramType::KProbe),
        ("tracing(fentry)", ProgramType::Tracing),
        ("xdp", ProgramType::Xdp),
        ("sched_cls(tc)", ProgramType::SchedClassifier),
        ("netfilter", ProgramType::Netfilter),
        ("cgroup_skb", ProgramType::CgroupSkb),
    ];
    let mut result: Vec<(&'static str, bool)> =
        programs.into_iter().map(|(name, t)| (name, is_program_supported(t).unwrap_or(false))).collect();
    result.push(("ringbuf(map)", is_map_supported(MapType::RingBuf).unwrap_or(false)));
    result
}

/// The CNI-relevant features, one line each.
fn features_text(f: &FeatureReport) -> String {
    let yes_no = |s: &Support| match s {
        Support::Yes => "yes",
        Support::No => "NO",
        Support::Unknown => "unknown",
    };
    let mut text = String::from("CNI features\n");
    for kind in &f.link_kinds {
        let why = kind.kernel_message.as_deref().or(kind.errno.as_deref()).unwrap_or("");
        text.push_str(&format!("  link kind {:<10} {:<8} {why}\n", kind.kind, yes_no(&kind.supported)));
    }
    let sysctl = |s: &crate::kernel::features::Sysctl| s.value.clone().unwrap_or_else(|| "absent".into());
    text.push_str(&format!(
        "  br_netfilter         {:<8} bridge-nf-call-iptables={} ip6tables={} (scope: {})\n",
        yes_no(&f.br_netfilter.active),
        sysctl(&f.br_netfilter.call_iptables),
        sysctl(&f.br_netfilter.call_ip6tables),
        f.br_netfilter.scope
    ));
    text.push_str(&format!(
        "  ip_forward           ipv4={} ipv6={}\n",
        sysctl(&f.ip_forward.ipv4),
        sysctl(&f.ip_forward.ipv6)
    ));
    text.push_str(&format!("  iptables backend     {} ({})\n", f.iptables_backend.backend, f.iptables_backend.how));
    for xdp in &f.xdp {
        let attached = match &xdp.attached {
            Some(progs) if !progs.is_empty() => progs
                .iter()
                .map(|p| format!("{} prog {}", p.mode, p.prog_id.map_or("?".into(), |i| i.to_string())))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none attached".into(),
        };
        text.push_str(&format!(
            "  xdp {:<16} native {:<8} {attached} (driver {}; native from: {})\n",
            xdp.name,
            yes_no(&xdp.native),
            xdp.driver,
            xdp.native_source
        ));
    }
    let kinds: Vec<String> = f.xdp_native_probes.iter().map(|p| format!("{} {}", p.kind, yes_no(&p.native))).collect();
    text.push_str(&format!(
        "  xdp native by kind   {} (attached to test devices in a throwaway namespace)\n",
        kinds.join(", ")
    ));
    let mounted = |m: &[String]| if m.is_empty() { "not mounted".to_string() } else { m.join(", ") };
    text.push_str(&format!("  tracefs              {}\n", mounted(&f.mounts.tracefs)));
    text.push_str(&format!("  bpffs                {}\n", mounted(&f.mounts.bpffs)));
    text
}

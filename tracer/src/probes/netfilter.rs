//! Netfilter and "connection refused" evidence (kernel side: tracer-ebpf/src/netfilter.rs):
//! who answered a connection attempt and how (stack RST, ICMP error, nothing), from
//! tracepoints whose records are copied whole and decoded here by field name. The verdicts'
//! table, chain and rule come from rule counters read in userspace (`rule_counters`), which
//! work on every kernel and every netfilter frontend without touching the ruleset.

use aya::{programs::TracePoint, Ebpf};
use serde::Serialize;
use tracer_ebpf::{names, NetfilterConfig, RecordConfig, RecordSource, ABSENT, RECORD_SOURCES};

use super::{error_chain, program};
use crate::kernel::{tracefs::TracepointFormat, KernelFacts};

/// How the netfilter family observes the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetfilterBackend {
    /// `kprobes` plus kprobe/kretprobe on `nft_do_chain` and `ipt_do_table`: the kernel names
    /// the table and chain of each DROP, also for rules without counters. Runs for every
    /// packet through every chain, so it is not the default: ask for it when a finding says
    /// the rule could not be found.
    Verdicts,
    /// The tracepoints, plus kprobes on the functions that answer packets: who sent each RST
    /// or ICMP error (the stack or a REJECT rule), on every kernel version. Fires only when
    /// a packet is answered.
    Kprobes,
    /// The tracepoints above, each where this kernel has it, plus rule counters.
    Tracepoints,
    /// Without `tcp:tcp_send_reset` and `icmp:icmp_send`: what kernels before 4.15 (and,
    /// for ICMP, before 6.15) offer. The verdicts then rest on drop reasons and counters.
    TracepointsNoReset,
}

impl NetfilterBackend {
    pub const ALL: [NetfilterBackend; 4] = [
        NetfilterBackend::Verdicts,
        NetfilterBackend::Kprobes,
        NetfilterBackend::Tracepoints,
        NetfilterBackend::TracepointsNoReset,
    ];
    /// Tried in this order when no backend is forced.
    pub const CHAIN: [NetfilterBackend; 2] = [NetfilterBackend::Kprobes, NetfilterBackend::Tracepoints];

    pub fn name(self) -> &'static str {
        match self {
            NetfilterBackend::Verdicts => "verdicts",
            NetfilterBackend::Kprobes => "kprobes",
            NetfilterBackend::Tracepoints => "tracepoints",
            NetfilterBackend::TracepointsNoReset => "tracepoints-noreset",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn uses_kprobes(self) -> bool {
        matches!(self, NetfilterBackend::Verdicts | NetfilterBackend::Kprobes)
    }
}

/// One tracepoint of the family: where it is and which program takes it.
struct Source {
    source: RecordSource,
    program: &'static str,
    system: &'static str,
    event: &'static str,
    /// Said when the kernel lacks it.
    missing: &'static str,
}

const SOURCES: [Source; RECORD_SOURCES] = [
    Source {
        source: RecordSource::TcpSendReset,
        program: names::PROG_TCP_SEND_RESET,
        system: "tcp",
        event: "tcp_send_reset",
        missing: "RSTs the stack sends: no tcp:tcp_send_reset (4.15+); missing listeners show as NO_SOCKET drops only",
    },
    Source {
        source: RecordSource::TcpReceiveReset,
        program: names::PROG_TCP_RECEIVE_RESET,
        system: "tcp",
        event: "tcp_receive_reset",
        missing: "RSTs clients receive: no tcp:tcp_receive_reset (4.15+)",
    },
    Source {
        source: RecordSource::IcmpSend,
        program: names::PROG_ICMP_SEND,
        system: "icmp",
        event: "icmp_send",
        missing: "ICMP errors sent (REJECT with icmp-*, port unreachable): no icmp:icmp_send (6.15+); REJECTs are told by rule counters",
    },
    Source {
        source: RecordSource::TcpConnect,
        program: names::PROG_SOCK_SET_STATE,
        system: "sock",
        event: "inet_sock_set_state",
        missing: "TCP connection attempts: no sock:inet_sock_set_state (4.16+)",
    },
];

/// What the netfilter family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetfilterCoverage {
    pub stack_resets: bool,
    /// The RSTs the stack sends for ports nothing listens on (no socket): the tracepoint has
    /// them where its format has `reason` (6.10+), else only a kprobe on `tcp_v4_send_reset`.
    pub listenerless_resets: bool,
    pub received_resets: bool,
    pub icmp_errors: bool,
    pub connect_attempts: bool,
    /// Table, chain and rule from counters (userspace; needs iptables-save or nft).
    pub rule_counters: bool,
    /// Namespace and device of each record (BTF).
    pub device_and_netns: bool,
    /// Kernel functions whose answers (RST, ICMP error) are seen by kprobe.
    pub answer_functions: Vec<String>,
    /// Functions whose DROP verdicts are seen by kprobe/kretprobe (`nft_do_chain`,
    /// `ipt_do_table`, `ip6t_do_table`): table and chain without rule counters.
    pub verdict_functions: Vec<String>,
    pub gaps: Vec<String>,
}

impl NetfilterCoverage {
    /// Records the answering functions hooked by kprobe, and what they add to the coverage.
    pub fn set_answer_functions(&mut self, answers: &[AnswerFunction]) {
        self.answer_functions = answers.iter().map(|f| f.name.to_string()).collect();
        self.listenerless_resets |= answers.iter().any(|f| f.name == "tcp_v4_send_reset");
        if self.stack_resets && !self.listenerless_resets {
            self.gaps.push(
                "RSTs for ports nothing listens on: tcp:tcp_send_reset fires only for resets with a socket on this kernel (no `reason` field) and tcp_v4_send_reset is not hooked; missing listeners show as NO_SOCKET drops"
                    .into(),
            );
        }
    }
}

/// A kernel function that answers a packet, and where its arguments are.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerFunction {
    pub name: &'static str,
    /// What the answer is: `stack-rst`, `reject-rst`, `reject-icmp`, `icmp`, `icmp6`.
    pub answer: &'static str,
    pub skb: usize,
    pub sk: Option<usize>,
    pub icmp_type: Option<usize>,
    pub code: Option<usize>,
}

/// The answering functions: (name, answer, upstream argument names in order). BTF's
/// parameter names replace the upstream list where the kernel has BTF.
const ANSWERERS: [(&str, &str, &[&str]); 8] = [
    ("tcp_v4_send_reset", "stack-rst", &["sk", "skb"]),
    ("tcp_v6_send_reset", "stack-rst", &["sk", "skb"]),
    ("nf_send_reset", "reject-rst", &["net", "sk", "oldskb"]),
    ("nf_send_reset6", "reject-rst", &["net", "sk", "oldskb"]),
    ("nf_send_unreach", "reject-icmp", &["skb_in", "code"]),
    ("nf_send_unreach6", "reject-icmp", &["net", "skb_in", "code"]),
    ("__icmp_send", "icmp", &["skb_in", "type", "code"]),
    ("icmp6_send", "icmp6", &["skb", "type", "code"]),
];

/// The answering functions this kernel has, with their argument positions (the first three
/// arguments only: that is what the programs read).
pub fn answer_functions(facts: &KernelFacts, formats: &RecordFormats) -> Vec<AnswerFunction> {
    // The tracepoints cover these where they exist: tcp_send_reset has resets without a
    // socket since 6.10 (its `reason` field came with that), icmp_send exists since 6.15.
    let reset_tracepoint_complete =
        formats[RecordSource::TcpSendReset as usize].as_ref().is_some_and(|f| f.field("reason").is_some());
    let icmp_tracepoint = formats[RecordSource::IcmpSend as usize].is_some();
    ANSWERERS
        .into_iter()
        .filter(|(name, _, _)| !(reset_tracepoint_complete && name.starts_with("tcp_v")))
        .filter(|(name, _, _)| !(icmp_tracepoint && *name == "__icmp_send"))
        .filter(|(name, _, _)| facts.kallsyms.range(name).is_some())
        .filter_map(|(name, answer, upstream)| {
            let params: Vec<String> = facts
                .btf
                .as_ref()
                .and_then(|b| b.function_params(name))
                .unwrap_or_else(|| upstream.iter().map(|p| p.to_string()).collect());
            let at = |names: &[&str]| params.iter().position(|p| names.contains(&p.as_str())).filter(|&i| i < 3);
            Some(AnswerFunction {
                name,
                answer,
                skb: at(&["skb", "oldskb", "skb_in"])?,
                sk: at(&["sk"]),
                icmp_type: at(&["type"]),
                code: at(&["code"]),
            })
        })
        .collect()
}

/// The functions whose DROP verdicts the kprobes backend reports, with the program that
/// reads their arguments: those this kernel has (modules loaded) and whose layout BTF gave.
pub fn verdict_functions(facts: &KernelFacts, cfg: &NetfilterConfig) -> Vec<(&'static str, &'static str)> {
    let nft_ready = cfg.nft_pkt_skb != ABSENT && cfg.nft_chain_name != ABSENT && cfg.nft_table_name != ABSENT;
    let ipt_ready = cfg.ipt_arg_skb != ABSENT && cfg.ipt_arg_table != ABSENT && cfg.xt_table_name != ABSENT;
    [
        ("nft_do_chain", names::PROG_NFT_ENTER, nft_ready),
        ("ipt_do_table", names::PROG_IPT_ENTER, ipt_ready),
        ("ip6t_do_table", names::PROG_IPT_ENTER, ipt_ready),
    ]
    .into_iter()
    .filter(|(name, _, ready)| *ready && facts.kallsyms.range(name).is_some())
    .map(|(name, program, _)| (name, program))
    .collect()
}

/// The formats of the family's tracepoints (None where the kernel lacks one), indexed by
/// [`RecordSource`]: the decoder reads the copied records with them.
pub type RecordFormats = [Option<TracepointFormat>; RECORD_SOURCES];

/// Offsets and the formats for this kernel and backend.
pub fn netfilter_config(
    facts: &KernelFacts,
    backend: NetfilterBackend,
) -> (NetfilterConfig, NetfilterCoverage, RecordFormats) {
    let mut cfg = NetfilterConfig::absent();
    let mut cov = NetfilterCoverage::default();
    let mut formats: RecordFormats = Default::default();
    for s in &SOURCES {
        let emulated_absent = backend == NetfilterBackend::TracepointsNoReset
            && matches!(s.source, RecordSource::TcpSendReset | RecordSource::IcmpSend);
        let format = if emulated_absent {
            cov.gaps.push(format!("{} (left out: --backend netfilter=tracepoints-noreset)", s.missing));
            None
        } else {
            match facts.tracefs.format(s.system, s.event) {
                Ok(f) => Some(f),
                Err(_) => {
                    cov.gaps.push(s.missing.to_string());
                    None
                }
            }
        };
        let Some(format) = format else { continue };
        let offset = |name: &str| format.field(name).map_or(ABSENT, |f| f.offset);
        cfg.records[s.source as usize] = RecordConfig {
            len: format.fields.iter().map(|f| f.offset + f.size).max().unwrap_or(0),
            skb: offset("skbaddr"),
            sk: offset("skaddr"),
            _pad: 0,
        };
        if s.source == RecordSource::TcpConnect {
            cfg.state_newstate = offset("newstate");
            cfg.state_protocol = offset("protocol");
            // The print format's symbol tables give the values (TCP states are also UAPI as
            // BPF_TCP_*; IPPROTO_TCP is UAPI).
            let value = |field: &str, name: &str| {
                format
                    .symbolic_values(field)
                    .and_then(|t| t.into_iter().find(|(_, n)| n == name).map(|(v, _)| v as u32))
            };
            cfg.tcp_syn_sent = value("newstate", "TCP_SYN_SENT").unwrap_or(2);
            cfg.ipproto_tcp = value("protocol", "IPPROTO_TCP").unwrap_or(libc::IPPROTO_TCP as u32);
        }
        match s.source {
            RecordSource::TcpSendReset => {
                cov.stack_resets = true;
                cov.listenerless_resets = format.field("reason").is_some();
            }
            RecordSource::TcpReceiveReset => cov.received_resets = true,
            RecordSource::IcmpSend => cov.icmp_errors = true,
            RecordSource::TcpConnect => cov.connect_attempts = true,
        }
        formats[s.source as usize] = Some(format);
    }
    match &facts.btf {
        Some(btf) => {
            let mut member = |strct: &str, path: &str| {
                btf.member(strct, path).map(|m| m.offset).unwrap_or_else(|e| {
                    cov.gaps.push(e.to_string());
                    ABSENT
                })
            };
            cfg.skb_dev = member("sk_buff", "dev");
            cfg.dev_ifindex = member("net_device", "ifindex");
            cfg.dev_net = member("net_device", "nd_net.net");
            cfg.sk_net = member("sock", "__sk_common.skc_net.net");
            cfg.net_inum = member("net", "ns.inum");
            cov.device_and_netns = cfg.net_inum != ABSENT && cfg.skb_dev != ABSENT;
            // Verdict kprobes (optional: missing members only disable them, quietly). Their
            // types live in modules on distribution kernels: vmlinux first, then module BTF.
            let modules: Vec<_> = ["nf_tables", "x_tables", "ip_tables"].iter().filter_map(|m| btf.module(m)).collect();
            let optional = |strct: &str, paths: &[&str]| {
                std::iter::once(btf)
                    .chain(modules.iter())
                    .find_map(|b| paths.iter().find_map(|p| b.member(strct, p).ok()))
                    .map_or(ABSENT, |m| m.offset)
            };
            cfg.nft_pkt_skb = optional("nft_pktinfo", &["skb"]);
            // `pkt->state` since 5.16, `pkt->xt.state` before.
            cfg.nft_pkt_state = optional("nft_pktinfo", &["state", "xt.state"]);
            cfg.nft_chain_name = optional("nft_chain", &["name"]);
            cfg.nft_chain_table = optional("nft_chain", &["table"]);
            cfg.nft_table_name = optional("nft_table", &["name"]);
            cfg.nft_table_family = optional("nft_table", &["family"]);
            cfg.xt_table_name = optional("xt_table", &["name"]);
            cfg.xt_table_af = optional("xt_table", &["af"]);
            cfg.state_hook = optional("nf_hook_state", &["hook"]);
            // ipt_do_table(priv, skb, state) since 5.16; (skb, state, table) before.
            let params = std::iter::once(btf)
                .chain(modules.iter())
                .find_map(|b| b.function_params("ipt_do_table"))
                .unwrap_or_default();
            let at = |names: &[&str]| {
                params.iter().position(|p| names.contains(&p.as_str())).filter(|&i| i < 3).map_or(ABSENT, |i| i as u32)
            };
            cfg.ipt_arg_skb = at(&["skb"]);
            cfg.ipt_arg_state = at(&["state"]);
            cfg.ipt_arg_table = at(&["table", "priv"]);
        }
        None => cov.gaps.push("namespace and device of resets and ICMP errors: no kernel BTF".into()),
    }
    cov.rule_counters = ["iptables-nft-save", "iptables-legacy-save", "iptables-save", "nft"]
        .into_iter()
        .any(|tool| which(tool).is_some());
    if !cov.rule_counters {
        cov.gaps.push("table, chain and rule of verdicts: neither iptables-save nor nft is installed".into());
    }
    (cfg, cov, formats)
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Loads and attaches the programs for the sources this kernel has, and kprobes on the
/// `answers` functions; `Err` when nothing attaches or a kprobe fails.
pub fn attach(
    ebpf: &mut Ebpf,
    formats: &RecordFormats,
    answers: &[AnswerFunction],
    verdicts: &[(&'static str, &'static str)],
) -> Result<String, String> {
    let mut attached = Vec::new();
    if !verdicts.is_empty() {
        for (function, entry) in verdicts {
            // The return probe first: an entry without its return would leave a frame behind.
            for name in [names::PROG_VERDICT_EXIT, *entry] {
                let program: &mut aya::programs::KProbe = program(ebpf, name)?;
                if program.fd().is_err() {
                    program.load().map_err(|e| format!("{name}: {}", error_chain(&e)))?;
                }
                program.attach(*function, 0).map_err(|e| format!("{name} on {function}: {}", error_chain(&e)))?;
            }
        }
        attached.push(format!("verdicts {}", verdicts.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(" ")));
    }
    if !answers.is_empty() {
        if !std::path::Path::new(super::KPROBE_PMU).exists() {
            return Err(format!("this kernel has no kprobes (no {})", super::KPROBE_PMU));
        }
        let programs = [names::PROG_ANSWER_SKB0, names::PROG_ANSWER_SKB1, names::PROG_ANSWER_SKB2];
        for f in answers {
            let name = programs[f.skb];
            let program: &mut aya::programs::KProbe = program(ebpf, name)?;
            if program.fd().is_err() {
                program.load().map_err(|e| format!("{name}: {}", error_chain(&e)))?;
            }
            program.attach(f.name, 0).map_err(|e| format!("kprobe on {}: {}", f.name, error_chain(&e)))?;
        }
        attached.push(format!("kprobes {}", answers.iter().map(|f| f.name).collect::<Vec<_>>().join(" ")));
    }
    let mut tracepoints = Vec::new();
    for s in &SOURCES {
        if formats[s.source as usize].is_none() {
            continue;
        }
        let program: &mut TracePoint = program(ebpf, s.program)?;
        program.load().map_err(|e| format!("{}: {}", s.program, error_chain(&e)))?;
        program.attach(s.system, s.event).map_err(|e| format!("{}:{}: {}", s.system, s.event, error_chain(&e)))?;
        tracepoints.push(format!("{}:{}", s.system, s.event));
    }
    if !tracepoints.is_empty() {
        attached.push(format!("tracepoints {}", tracepoints.join(" ")));
    }
    if attached.is_empty() {
        return Err(
            "none of tcp:tcp_send_reset, tcp:tcp_receive_reset, icmp:icmp_send, sock:inet_sock_set_state exists here"
                .into(),
        );
    }
    Ok(attached.join(" "))
}

/// Rulesets and bridges of the traced namespaces, read from userspace at the start and the
/// end of a session: what moved in between attributes verdicts to rules and shows which
/// bridges carried traffic past netfilter.
#[derive(Default)]
pub struct NamespaceState {
    pub rules: std::collections::HashMap<u32, super::rule_counters::RulesetSnapshot>,
    pub bridges: std::collections::HashMap<u32, super::bridges::BridgeSnapshot>,
}

/// Namespaces to read: the given ones, or this process's and every named one (`/run/netns`).
pub fn namespace_scope(only: Option<&[std::path::PathBuf]>) -> Vec<(u32, std::path::PathBuf)> {
    use crate::kernel::netns::inode_of;
    let paths: Vec<std::path::PathBuf> = match only {
        Some(paths) => paths.to_vec(),
        None => {
            let mut paths = vec![std::path::PathBuf::from("/proc/self/ns/net")];
            if let Ok(entries) = std::fs::read_dir("/run/netns") {
                paths.extend(entries.flatten().map(|e| e.path()));
            }
            paths
        }
    };
    let mut seen = std::collections::HashSet::new();
    paths
        .into_iter()
        .filter_map(|p| inode_of(&p).map(|inode| (inode, p)))
        .filter(|(inode, _)| seen.insert(*inode))
        .collect()
}

/// Most namespaces read at once (each read runs a few short commands).
const PARALLEL_READS: usize = 8;

impl NamespaceState {
    pub fn take(scope: &[(u32, std::path::PathBuf)]) -> Self {
        let mut state = Self::default();
        for chunk in scope.chunks(PARALLEL_READS) {
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(inode, path)| {
                        s.spawn(move || {
                            (
                                super::rule_counters::RulesetSnapshot::take(*inode, path),
                                super::bridges::BridgeSnapshot::take(*inode, path),
                            )
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for (rules, bridges) in results {
                for e in rules.errors.iter().chain(&bridges.errors) {
                    log::debug!("netns {}: {e}", rules.netns);
                }
                state.bridges.insert(bridges.netns, bridges);
                state.rules.insert(rules.netns, rules);
            }
        }
        state
    }

    /// Rule counters that moved since `before` (with whether the namespace had a baseline),
    /// and bridges with the packets their ports received since `before`.
    #[allow(clippy::type_complexity)]
    pub fn changes_since(
        &self,
        before: &NamespaceState,
    ) -> (
        Vec<(super::rule_counters::RuleHit, bool)>,
        Vec<(&super::bridges::BridgeSnapshot, &super::bridges::BridgeInfo, u64)>,
    ) {
        let mut hits = Vec::new();
        for (netns, after) in &self.rules {
            let baseline = before.rules.get(netns);
            hits.extend(super::rule_counters::moved(baseline, after).into_iter().map(|h| (h, baseline.is_none())));
        }
        let mut bridges = Vec::new();
        for (netns, after) in &self.bridges {
            let traffic = super::bridges::traffic(before.bridges.get(netns), after);
            for info in &after.bridges {
                let packets = traffic.iter().find(|(name, _)| *name == info.name).map_or(0, |(_, p)| *p);
                bridges.push((after, info, packets));
            }
        }
        (hits, bridges)
    }
}

//! The iptables backend: which one the host's `iptables` command uses (`iptables -V`), and which
//! backends hold rules in the host namespace: the legacy x_tables tables instantiated there
//! (`/proc/thread-self/net/ip{,6}_tables_names`, then `ip{,6}tables-legacy-save` for their rules)
//! and nf_tables (`nft -j list ruleset`, or `ip{,6}tables-nft-save` without nft). Nothing here
//! instantiates tables or loads modules. Rules in both backends are the classic cause of
//! components not seeing each other's rules. Also here: finding and running host programs
//! ([`find_program`] is shared with `modules.rs`, which looks for `modprobe`).

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct IptablesBackend {
    /// `legacy` | `nft` | `both-in-use` | `not-installed` | `unknown`.
    pub backend: &'static str,
    pub how: String,
    /// From `iptables -V`.
    pub iptables_version: Option<String>,
    /// The backend the host's `iptables` command uses: `legacy` or `nft`.
    pub iptables_mode: Option<&'static str>,
    /// x_tables (legacy) tables instantiated in the namespace, IPv4 and IPv6 (`ip6:` prefix).
    pub legacy_tables: Vec<String>,
    /// Rules in the legacy tables (`iptables-legacy-save`, `ip6tables-legacy-save`).
    pub legacy_rules: Option<usize>,
    /// Rules in nf_tables, iptables-nft's and native nft's (`nft -j list ruleset`).
    pub nft_rules: Option<usize>,
    /// What could not be found out, and why.
    pub notes: Vec<String>,
}

pub(super) fn probe_iptables() -> IptablesBackend {
    let mut notes = Vec::new();
    let (version, mode) = match run_program("iptables", &["-V"]) {
        Ok(out) => parse_iptables_version(&out),
        Err(e) => {
            notes.push(format!("iptables -V: {e}"));
            (None, None)
        }
    };
    let installed = find_program("iptables").is_some();

    let mut legacy_tables = Vec::new();
    let mut tables_known = true;
    for (file, prefix) in [("ip_tables_names", ""), ("ip6_tables_names", "ip6:")] {
        // /proc/thread-self/net follows this thread's namespace; /proc/net the main thread's.
        match fs::read_to_string(Path::new("/proc/thread-self/net").join(file)) {
            Ok(text) => legacy_tables.extend(text.split_whitespace().map(|t| format!("{prefix}{t}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                notes.push(format!("/proc/thread-self/net/{file}: {e}"));
                tables_known = false;
            }
        }
    }
    // Only dump legacy tables that exist: nothing here may instantiate tables or load modules.
    let legacy_rules = if !tables_known {
        None
    } else if legacy_tables.is_empty() {
        Some(0)
    } else {
        let mut total = Some(0);
        for (family, has) in [
            ("iptables", legacy_tables.iter().any(|t| !t.starts_with("ip6:"))),
            ("ip6tables", legacy_tables.iter().any(|t| t.starts_with("ip6:"))),
        ] {
            if !has {
                continue;
            }
            let save = if find_program(&format!("{family}-legacy-save")).is_some() {
                format!("{family}-legacy-save")
            } else if mode == Some("legacy") {
                format!("{family}-save")
            } else {
                notes.push(format!("{family}-legacy-save is not installed: legacy {family} rules not counted"));
                total = None;
                continue;
            };
            match run_program(&save, &[]) {
                Ok(out) => total = total.map(|t| t + count_save_rules(&out)),
                Err(e) => {
                    notes.push(format!("{save}: {e}"));
                    total = None;
                }
            }
        }
        total
    };
    let nft_rules = match run_program("nft", &["-j", "list", "ruleset"]) {
        Ok(out) => count_nft_rules(&out).map_err(|e| notes.push(format!("nft -j list ruleset: {e}"))).ok(),
        Err(e) => {
            notes.push(format!("nft -j list ruleset: {e}"));
            // Without nft, iptables-nft's own tables can still be counted.
            let mut total = Some(0);
            for save in ["iptables-nft-save", "ip6tables-nft-save"] {
                match run_program(save, &[]) {
                    Ok(out) => total = total.map(|t| t + count_save_rules(&out)),
                    Err(e) => {
                        notes.push(format!("{save}: {e}"));
                        total = None;
                    }
                }
            }
            total
        }
    };
    let legacy_in_use = legacy_rules.map_or(!legacy_tables.is_empty(), |n| n > 0);
    let nft_in_use = nft_rules.is_some_and(|n| n > 0);
    let backend = decide_backend(installed, mode, legacy_in_use, nft_in_use);
    let how = format!(
        "`iptables -V` says {}; legacy tables: {}; legacy rules: {}; nf_tables rules: {}",
        version
            .as_deref()
            .map_or("nothing (not run)".to_string(), |v| format!("v{v} ({})", mode.unwrap_or("mode not stated"))),
        match (tables_known, legacy_tables.is_empty()) {
            (false, _) => "not readable".to_string(),
            (true, true) => "none".to_string(),
            (true, false) => legacy_tables.join(" "),
        },
        legacy_rules.map_or("not counted".to_string(), |n| n.to_string()),
        nft_rules.map_or("not counted".to_string(), |n| n.to_string()),
    );
    IptablesBackend {
        backend,
        how,
        iptables_version: version,
        iptables_mode: mode,
        legacy_tables,
        legacy_rules,
        nft_rules,
        notes,
    }
}

/// `iptables v1.8.9 (nf_tables)` → ("1.8.9", nft); `(legacy)` → legacy; before 1.8 there was
/// only the legacy backend and no suffix.
fn parse_iptables_version(output: &str) -> (Option<String>, Option<&'static str>) {
    let line = output.lines().find(|l| l.contains('v')).unwrap_or("").trim();
    let version = line.split_whitespace().find_map(|w| w.strip_prefix('v')).map(str::to_string);
    let mode = if line.contains("(nf_tables)") {
        Some("nft")
    } else if line.contains("(legacy)") {
        Some("legacy")
    } else {
        let major_minor =
            version.as_deref().map(|v| v.split('.').take(2).map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
        match major_minor.as_deref() {
            Some([major, minor]) if (*major, *minor) < (1, 8) => Some("legacy"),
            _ => None,
        }
    };
    (version, mode)
}

fn decide_backend(installed: bool, mode: Option<&'static str>, legacy_in_use: bool, nft_in_use: bool) -> &'static str {
    match (legacy_in_use, nft_in_use) {
        (true, true) => "both-in-use",
        _ if !installed => "not-installed",
        _ => mode.unwrap_or("unknown"),
    }
}

/// Rules in `iptables-save` output: the `-A` lines.
fn count_save_rules(output: &str) -> usize {
    output.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Rules in `nft -j list ruleset` output.
fn count_nft_rules(json: &str) -> Result<usize, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("unexpected output: {e}"))?;
    let items = value.get("nftables").and_then(|v| v.as_array()).ok_or("no `nftables` array in the output")?;
    Ok(items.iter().filter(|item| item.get("rule").is_some()).count())
}

/// Finds a program in PATH or the sbin directories (root's PATH sometimes lacks them).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs a program (found with [`find_program`]) and returns its stdout.
fn run_program(name: &str, args: &[&str]) -> Result<String, String> {
    let program = find_program(name).ok_or_else(|| "not installed".to_string())?;
    let output = Command::new(&program).args(args).output().map_err(|e| format!("cannot run: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{}: {}", output.status, stderr.trim().lines().collect::<Vec<_>>().join("; ")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iptables_version() {
        assert_eq!(parse_iptables_version("iptables v1.8.9 (nf_tables)\n"), (Some("1.8.9".into()), Some("nft")));
        assert_eq!(parse_iptables_version("iptables v1.8.7 (legacy)\n"), (Some("1.8.7".into()), Some("legacy")));
        assert_eq!(parse_iptables_version("iptables v1.4.21\n"), (Some("1.4.21".into()), Some("legacy")));
        assert_eq!(parse_iptables_version("iptables v1.8.0\n"), (Some("1.8.0".into()), None));
        assert_eq!(parse_iptables_version(""), (None, None));
    }

    #[test]
    fn decides_iptables_backend() {
        assert_eq!(decide_backend(true, Some("nft"), false, true), "nft");
        assert_eq!(decide_backend(true, Some("legacy"), true, false), "legacy");
        assert_eq!(decide_backend(true, Some("nft"), true, true), "both-in-use");
        assert_eq!(decide_backend(false, None, true, true), "both-in-use");
        assert_eq!(decide_backend(false, None, false, false), "not-installed");
        assert_eq!(decide_backend(true, None, false, false), "unknown");
    }

    #[test]
    fn counts_rules() {
        let save =
            "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j DROP\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n";
        assert_eq!(count_save_rules(save), 2);
        let nft = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": []}}]}"#;
        assert_eq!(count_nft_rules(nft), Ok(1));
        assert_eq!(count_nft_rules(r#"{"nftables": [{"metainfo": {}}]}"#), Ok(0));
        assert!(count_nft_rules("Error: cannot open").is_err());
    }
}

//! Module support and the state of the module behind each feature: loaded (`/proc/modules`),
//! built in (`modules.builtin` of the running release, or `/sys/module`), installed and loadable
//! (`modules.dep`), or absent and why. `/proc/modules` is read before and after the link probes,
//! so modules the probes made the kernel autoload are reported as such. Without CONFIG_MODULES
//! (no `/proc/modules`), what works is built in and what does not is absent. Module support as a
//! whole: CONFIG_MODULES, whether `/lib/modules/<release>` is installed, `kernel.modules_disabled`
//! and where `modprobe` is.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{iptables::find_program, Support};

#[derive(Debug, Clone, Serialize)]
pub struct ModuleSupport {
    /// CONFIG_MODULES: whether `/proc/modules` exists.
    pub config_modules: Support,
    /// `/lib/modules/<release>`.
    pub modules_dir: String,
    pub modules_dir_present: bool,
    /// `kernel.modules_disabled`; `None` when the sysctl does not exist (no module support).
    pub modules_disabled: Option<bool>,
    /// Where `modprobe` is, if installed.
    pub modprobe: Option<String>,
}

const NO_MODULES: &str = "kernel without module support";

/// What the module tooling knows: loaded modules, built-in ones, installed ones.
#[derive(Debug, Clone, Default)]
pub(super) struct ModuleIndex {
    /// `/lib/modules/<release>`.
    pub(super) dir: PathBuf,
    /// `/sys/module`: loaded modules, and built-in ones that have parameters or a version.
    pub(super) sysfs: PathBuf,
    /// `/proc/modules`; `None` without CONFIG_MODULES.
    pub(super) loaded: Option<HashSet<String>>,
    /// `modules.builtin` of this release.
    pub(super) builtin: Option<HashSet<String>>,
    /// `modules.dep` of this release: what `modprobe` can load.
    pub(super) available: Option<HashSet<String>>,
}

impl ModuleIndex {
    pub(super) fn load(release: &str) -> Self {
        let dir = Path::new("/lib/modules").join(release);
        let read = |file: &str| fs::read_to_string(dir.join(file)).ok().map(|t| module_names(&t));
        Self {
            loaded: read_proc_modules(),
            builtin: read("modules.builtin"),
            available: read("modules.dep"),
            sysfs: PathBuf::from("/sys/module"),
            dir,
        }
    }

    /// The state of `name`, given the loaded set read before the link probes ran.
    pub(super) fn state(&self, name: &str, loaded_before: Option<&HashSet<String>>) -> String {
        let in_sysfs = self.sysfs.join(name).exists();
        match &self.loaded {
            Some(loaded) if loaded.contains(name) => {
                if loaded_before.is_some_and(|before| !before.contains(name)) {
                    "loaded (autoloaded by this probe)".into()
                } else {
                    "loaded".into()
                }
            }
            _ if self.builtin.as_ref().is_some_and(|b| b.contains(name)) || in_sysfs => "built-in".into(),
            None => format!("{NO_MODULES} (built in if the probe found it supported)"),
            Some(_) if self.available.as_ref().is_some_and(|a| a.contains(name)) => "available, not loaded".into(),
            Some(_) if !self.dir.is_dir() => format!("unknown: {} is missing", self.dir.display()),
            Some(_) => format!("absent: not in {}/modules.dep or modules.builtin", self.dir.display()),
        }
    }
}

/// Without module support, what works is built in, and what does not work is simply absent.
pub(super) fn settle(state: String, works: Support) -> String {
    match works {
        Support::Yes if state.starts_with(NO_MODULES) => "built-in".into(),
        Support::No if state.starts_with(NO_MODULES) => "absent (kernel without module support)".into(),
        _ => state,
    }
}

pub(super) fn read_proc_modules() -> Option<HashSet<String>> {
    let text = fs::read_to_string("/proc/modules").ok()?;
    Some(text.lines().filter_map(|l| l.split_whitespace().next()).map(|n| n.replace('-', "_")).collect())
}

/// Module names from `modules.dep` (`kernel/…/vxlan.ko.zst: deps…`) or `modules.builtin` lines.
fn module_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| {
            let path = line.split(':').next()?.trim();
            let file = path.rsplit('/').next()?;
            let name = file.split(".ko").next()?;
            (!name.is_empty()).then(|| name.replace('-', "_"))
        })
        .collect()
}

pub(super) fn probe_modules(release: &str, index: &ModuleIndex) -> ModuleSupport {
    let disabled = fs::read_to_string("/proc/sys/kernel/modules_disabled").ok().map(|v| v.trim() != "0");
    ModuleSupport {
        config_modules: if Path::new("/proc/modules").exists() { Support::Yes } else { Support::No },
        modules_dir: Path::new("/lib/modules").join(release).display().to_string(),
        modules_dir_present: index.dir.is_dir(),
        modules_disabled: disabled,
        modprobe: find_program("modprobe").map(|p| p.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_module_lists() {
        let names = module_names(
            "kernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko.zst\nkernel/net/bridge/br_netfilter.ko:\n\
             kernel/drivers/net/wireguard/wireguard.ko.xz:\nkernel/foo/nf-nat.ko\n",
        );
        for n in ["vxlan", "br_netfilter", "wireguard", "nf_nat"] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        assert!(!names.contains("udp_tunnel"), "dependencies are not entries");
        let index = ModuleIndex {
            dir: PathBuf::from("/nonexistent/modules"),
            sysfs: PathBuf::from("/nonexistent/sys/module"),
            loaded: Some(HashSet::from(["vxlan".to_string(), "geneve".to_string()])),
            builtin: Some(HashSet::new()),
            available: Some(names),
        };
        let before = HashSet::from(["vxlan".to_string()]);
        assert_eq!(index.state("vxlan", Some(&before)), "loaded");
        assert_eq!(index.state("geneve", Some(&before)), "loaded (autoloaded by this probe)");
        assert_eq!(index.state("wireguard", Some(&before)), "available, not loaded");
        assert!(index.state("dptrace_no_such_module", Some(&before)).starts_with("unknown"));
    }
}

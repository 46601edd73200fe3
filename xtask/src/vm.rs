//! `cargo xtask vm-test`: dptrace's kernel-compatibility matrix.
//!
//! `vm-images/matrix.toml` declares the kernels (Debian packages, module-set variants, locally
//! built trees) and what must work on each. Every entry is booted under QEMU by
//! `vm-images/run-in-vm.sh`, one after another (the machines have 2 cores), with the host-built
//! dptrace copied in. Inside, `vm-images/guests/matrix.sh` prints the raw output of
//! `dptrace check --json`, `dptrace lab run --all --json` and one forced-backend trace per backend
//! in marked sections on the serial console. The host runs the same script with the same binary
//! first, so the host kernel is a row of the report too. All verdicts are made here, from the
//! JSON, so the guest script stays a dumb collector and host and guests are judged alike.
//!
//! Kernels that the matrix builds itself (a `build` entry: a config fragment in
//! `vm-images/kernel-configs/`) are built by `vm-images/build-kernel.sh` when its cache
//! (`/var/cache/dptrace/kernels/NAME-KEY`, outside the clone) does not have them yet; a build
//! that fails fails that kernel's row.

mod evidence;
mod field;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::evidence::{link_failure_explained, netfilter_told_apart, test_drops_seen, Topology};
use crate::step;

const MATRIX: &str = "vm-images/matrix.toml";
const GUEST_SCRIPT: &str = "vm-images/guests/matrix.sh";
/// The field suite's guest script; matrix.sh runs it from here at its end.
const FIELD_SCRIPT: &str = "vm-images/guests/field.sh";
const FIELD_SCRIPT_IN_GUEST: &str = "/usr/lib/dptrace-field/field.sh";
const RUN_IN_VM: &str = "vm-images/run-in-vm.sh";
const BUILD_KERNEL: &str = "vm-images/build-kernel.sh";
const KERNEL_CONFIGS: &str = "vm-images/kernel-configs";
const OUT_DIR: &str = "target/vm-test";
/// The whole matrix (without kernel builds) should fit in this (issue 3); longer runs are
/// reported, not failed.
const BUDGET_SECS: f64 = 15.0 * 60.0;

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Default)]
pub struct VmTestArgs {
    /// Matrix entries to boot, by name (see vm-images/matrix.toml). Default: every entry
    /// (kernels the matrix builds itself are built first if they are not cached yet).
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Do not run the checks on the host kernel.
    #[arg(long)]
    pub no_host: bool,
}

/// Runs the matrix, writes `target/vm-test/report.{md,json}` and fails if an expectation failed.
pub fn vm_test(root: &Path, bin: &Path, args: &VmTestArgs) -> anyhow::Result<()> {
    step("VM test: the kernel-compatibility matrix (vm-images/matrix.toml)");
    let started = Instant::now();
    let matrix = Matrix::load(&root.join(MATRIX))?;
    let selected = matrix.select(&args.kernels)?;
    let out_dir = root.join(OUT_DIR);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Every row must run the same binary, even if a `cargo build` replaces the original meanwhile.
    let snapshot = out_dir.join("dptrace");
    fs::copy(bin, &snapshot).with_context(|| format!("cannot copy {} to {}", bin.display(), snapshot.display()))?;
    let bin = snapshot.as_path();

    let mut rows = Vec::new();
    if !args.no_host {
        rows.push(host_row(root, bin, &matrix, &out_dir)?);
    }
    for entry in selected {
        eprintln!("\n--- {}: {}", entry.name, entry.description);
        let (kernel_dir, build) = match entry.kernel_dir(root, &out_dir) {
            Ok(found) => found,
            Err(why) => {
                eprintln!("--- {}: FAILED: {why:#}", entry.name);
                rows.push(Row::unbootable(entry, format!("{why:#}")));
                continue;
            }
        };
        let run = run_vm(root, bin, &matrix, entry, kernel_dir.as_deref(), &out_dir)?;
        let mut row = judge(&entry.name, &entry.description, &entry.expect, run, true);
        row.build = build;
        rows.push(row);
    }

    // The field suite's table gets the rows of the field scenarios that passed; a kernel that
    // ran replaces its rows from before.
    let ran: Vec<String> = rows.iter().filter(|r| r.name != "host").map(|r| r.name.clone()).collect();
    let field_rows: Vec<Value> = rows.iter().flat_map(|r| r.field_rows.iter().cloned()).collect();
    crate::field::write_vm_results(root, &ran, field_rows)?;

    let report = Report { total_secs: started.elapsed().as_secs_f64(), dptrace: dptrace_version(bin), rows };
    let markdown = report.markdown();
    fs::write(out_dir.join("report.md"), &markdown)?;
    fs::write(out_dir.join("report.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("\n{markdown}");
    eprintln!("report: {0}/report.md and {0}/report.json", out_dir.display());
    let failed: Vec<&str> =
        report.rows.iter().filter(|r| r.status == Status::Failed).map(|r| r.name.as_str()).collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on: {} (console logs in {})", failed.join(", "), out_dir.display());
    }
    Ok(())
}

// ------------------------------------------------------------------------------ matrix.toml

/// `vm-images/matrix.toml` (its header comment documents every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Matrix {
    defaults: Defaults,
    host: HostEntry,
    #[serde(rename = "kernel")]
    kernels: Vec<KernelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    /// Forced runs tried on every kernel, as `FAMILY=NAME`.
    try_backends: Vec<String>,
    timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelEntry {
    name: String,
    description: String,
    /// A Debian package name, `*` matching within one `-`-separated part.
    package: Option<String>,
    /// An unpacked kernel tree, relative to the workspace root.
    dir: Option<String>,
    /// A kernel built from `vm-images/kernel-configs/BUILD.config` by build-kernel.sh, which
    /// vm-test runs first (it reuses the cached kernel when there is one).
    build: Option<String>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    exclude_modules: Vec<String>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    expect: Expect,
}

/// What must hold on a kernel for vm-test to pass.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    btf: Option<bool>,
    #[serde(default)]
    scenarios: Vec<String>,
    /// Hook family -> backends whose forced run must see the test drops.
    #[serde(default)]
    backends: BTreeMap<String, Vec<String>>,
    /// Feature (link kind or module, as matrix.sh probes them) -> must it work.
    #[serde(default)]
    features: BTreeMap<String, bool>,
    /// `feature` names of problems `dptrace check` must report (e.g. `link-kind:wireguard`).
    #[serde(default)]
    check_problems: Vec<String>,
    /// Scenarios of `scenarios` that may be diagnosed degraded here (the lab says what it could
    /// not check on this kernel); any other degraded scenario fails. Only for kernels without
    /// BTF.
    #[serde(default)]
    degraded: Vec<String>,
    /// Field scenarios (vm-images/guests/field.sh, judged by vm/field.rs) that must run in this
    /// guest and pass: the real component's fault gives its finding, a healthy twin none.
    #[serde(default)]
    field: Vec<String>,
}

impl Expect {
    /// Whether the forced run `FAMILY=NAME` must work.
    fn backend(&self, spec: &str) -> bool {
        let Some((family, name)) = spec.split_once('=') else { return false };
        self.backends.get(family).is_some_and(|names| names.iter().any(|n| n == name))
    }

    fn backend_specs(&self) -> impl Iterator<Item = String> + '_ {
        self.backends.iter().flat_map(|(family, names)| names.iter().map(move |n| format!("{family}={n}")))
    }
}

impl Matrix {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let matrix: Matrix = toml::from_str(text)?;
        matrix.validate()?;
        Ok(matrix)
    }

    /// Catches mistakes in the file before anything boots.
    fn validate(&self) -> anyhow::Result<()> {
        if !self.host.expect.field.is_empty() {
            bail!("[host.expect] field: the field scenarios run only in the guests (they change the whole machine)");
        }
        for (i, entry) in self.kernels.iter().enumerate() {
            let name = &entry.name;
            if self.kernels[..i].iter().any(|e| &e.name == name) {
                bail!("kernel `{name}` is listed twice");
            }
            let sources = [entry.package.is_some(), entry.dir.is_some(), entry.build.is_some()];
            if sources.iter().filter(|&&given| given).count() != 1 {
                bail!("kernel `{name}`: give exactly one of `package`, `dir` and `build`");
            }
            if let Some(build) = &entry.build {
                if build.is_empty() || !build.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    bail!(
                        "kernel `{name}`: `build` names a config in {KERNEL_CONFIGS}/ (like 6.1-nobtf), not `{build}`"
                    );
                }
            }
            let expect = &entry.expect;
            if let Some(s) = expect.degraded.iter().find(|s| !expect.scenarios.contains(s)) {
                bail!("kernel `{name}`: degraded scenario `{s}` is not in its `scenarios`");
            }
            if let Some(id) = expect.field.iter().find(|id| field::scenario(id).is_none()) {
                let known: Vec<&str> = field::SCENARIOS.iter().map(|s| s.id).collect();
                bail!("kernel `{name}`: no field scenario `{id}` (known: {})", known.join(", "));
            }
            if expect.btf == Some(true) && !expect.degraded.is_empty() {
                bail!("kernel `{name}`: a kernel with BTF may not have degraded scenarios");
            }
            for spec in entry.expect.backend_specs().chain(self.defaults.try_backends.iter().cloned()) {
                if !spec.contains('=') {
                    bail!("kernel `{name}`: backend `{spec}` is not FAMILY=NAME");
                }
            }
        }
        Ok(())
    }

    /// The entries to run: the named ones, or all.
    fn select(&self, names: &[String]) -> anyhow::Result<Vec<&KernelEntry>> {
        if names.is_empty() {
            return Ok(self.kernels.iter().collect());
        }
        let known = || self.kernels.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ");
        names
            .iter()
            .map(|name| {
                self.kernels
                    .iter()
                    .find(|e| &e.name == name)
                    .with_context(|| format!("no kernel `{name}` in {MATRIX}; known: {}", known()))
            })
            .collect()
    }

    /// The forced runs for a kernel: the defaults, plus what it expects that they lack.
    fn backends_for(&self, expect: &Expect) -> Vec<String> {
        let mut specs = self.defaults.try_backends.clone();
        for spec in expect.backend_specs() {
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
        specs
    }
}

impl KernelEntry {
    /// The kernel tree to boot (None for a package, which run-in-vm.sh fetches itself), and
    /// for a `build` entry how it was obtained. A `build` entry is built now unless the cache
    /// has it (build-kernel.sh decides, and prints the tree it installed or found); a failed
    /// build is an error. A hand-made `dir` must hold a boot/vmlinuz-*.
    fn kernel_dir(&self, root: &Path, out_dir: &Path) -> anyhow::Result<(Option<PathBuf>, Option<KernelBuild>)> {
        if let Some(config) = &self.build {
            let build = build_kernel(root, config, out_dir)?;
            return Ok((Some(build.dir.clone()), Some(build)));
        }
        let Some(dir) = &self.dir else { return Ok((None, None)) };
        let dir = root.join(dir);
        let has_image = fs::read_dir(dir.join("boot"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
        if !has_image {
            bail!("no kernel in {} (no boot/vmlinuz-*)", dir.display());
        }
        Ok((Some(dir), None))
    }

    /// The `run-in-vm.sh` options that pick this kernel and its module set.
    fn boot_args(&self, kernel_dir: Option<&Path>) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(package) = &self.package {
            args.extend(["--kernel-pkg".to_string(), package.clone()]);
        }
        if let Some(dir) = kernel_dir {
            args.extend(["--kernel-dir".to_string(), dir.display().to_string()]);
        }
        for module in &self.modules {
            args.extend(["--module".to_string(), module.clone()]);
        }
        for module in &self.exclude_modules {
            args.extend(["--exclude-module".to_string(), module.clone()]);
        }
        args
    }
}

// ---------------------------------------------------------------------------- kernel builds

/// A kernel of the matrix that build-kernel.sh built, or found in its cache.
#[derive(Debug, Clone, Serialize)]
struct KernelBuild {
    /// Its config: `vm-images/kernel-configs/CONFIG.config`.
    config: String,
    /// The installed tree (`/var/cache/dptrace/kernels/CONFIG-KEY`).
    dir: PathBuf,
    /// It was in the cache: nothing was built.
    cached: bool,
    secs: f64,
    /// build-kernel.sh's messages.
    log: PathBuf,
}

/// Runs `build-kernel.sh CONFIG`, which builds the kernel unless its cache has it for this
/// config fragment and recipe, and prints the kernel tree. Its messages are passed through
/// (prefixed) and saved; a failure is an error that names the logs.
fn build_kernel(root: &Path, config: &str, out_dir: &Path) -> anyhow::Result<KernelBuild> {
    let fragment = root.join(KERNEL_CONFIGS).join(format!("{config}.config"));
    if !fragment.is_file() {
        bail!("no kernel config {}", fragment.display());
    }
    let log = out_dir.join(format!("{config}.build.log"));
    let mut saved = fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let mut cmd = Command::new(root.join(BUILD_KERNEL));
    cmd.arg(config).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let mut cached = false;
    let stderr = child.stderr.take().context("build-kernel.sh stderr")?;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("  | {line}");
        let _ = writeln!(saved, "{line}");
        cached |= line.contains(" is up to date ");
    }
    // Its only stdout line, printed last: the kernel tree.
    let mut stdout = String::new();
    child.stdout.take().context("build-kernel.sh stdout")?.read_to_string(&mut stdout)?;
    let status = child.wait()?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "building kernel {config} failed ({status}, after {secs:.0} s): see {} and the make log it names",
            log.display()
        );
    }
    let dir =
        stdout.lines().last().map(PathBuf::from).filter(|dir| dir.join(".complete").is_file()).with_context(|| {
            format!("build-kernel.sh {config} printed no finished kernel tree (stdout: {stdout:?})")
        })?;
    Ok(KernelBuild { config: config.into(), dir, cached, secs, log })
}

// ---------------------------------------------------------------------------------- running

/// What one run of matrix.sh left, before it is judged.
struct RunOutput {
    /// The serial console (or the host run's stdout), as saved in `log`.
    console: String,
    /// run-in-vm.sh's (or the host script's) exit status.
    exit: Option<i32>,
    /// `host`, or the Debian package and version (or tree) that run-in-vm.sh booted.
    kernel: String,
    accel: Option<String>,
    secs: f64,
    log: PathBuf,
}

/// The host kernel's row: matrix.sh run directly, as root, with the same binary.
fn host_row(root: &Path, bin: &Path, matrix: &Matrix, out_dir: &Path) -> anyhow::Result<Row> {
    let description = "the machine running vm-test";
    if !crate::nix_is_root() {
        return Ok(Row::skipped_host(description, "needs root (it creates namespaces and loads eBPF)"));
    }
    eprintln!("\n--- host: the same checks with the same binary on this machine's kernel");
    let log = out_dir.join("host.log");
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(root.join(GUEST_SCRIPT))
        .env("DPTRACE", bin)
        .env("DPTRACE_MATRIX_HOST", "1")
        .env("DPTRACE_MATRIX_BACKENDS", matrix.backends_for(&matrix.host.expect).join(" "))
        .stdout(fs::File::create(&log)?)
        .status()
        .context("cannot run bash for the host checks")?;
    let run = RunOutput {
        console: fs::read_to_string(&log).unwrap_or_default(),
        exit: status.code(),
        kernel: "host".into(),
        accel: None,
        secs: started.elapsed().as_secs_f64(),
        log,
    };
    Ok(judge("host", description, &matrix.host.expect, run, false))
}

/// Boots one matrix kernel with matrix.sh as its guest script. run-in-vm.sh's own messages
/// are passed through (prefixed) so long runs show progress; its console goes to the log.
fn run_vm(
    root: &Path,
    bin: &Path,
    matrix: &Matrix,
    entry: &KernelEntry,
    kernel_dir: Option<&Path>,
    out_dir: &Path,
) -> anyhow::Result<RunOutput> {
    let log = out_dir.join(format!("{}.log", entry.name));
    // Settings for the guest script, which sources /etc/dptrace-matrix.env.
    let env_file = out_dir.join(format!("{}.env", entry.name));
    fs::write(
        &env_file,
        format!(
            "DPTRACE_MATRIX_BACKENDS=\"{}\"\nDPTRACE_FIELD=\"{}\"\n",
            matrix.backends_for(&entry.expect).join(" "),
            entry.expect.field.join(" ")
        ),
    )?;
    let timeout = entry.timeout_secs.unwrap_or(matrix.defaults.timeout_secs);

    let mut cmd = Command::new(root.join(RUN_IN_VM));
    cmd.args(entry.boot_args(kernel_dir))
        .arg("--timeout")
        .arg(timeout.to_string())
        .arg("--copy")
        .arg(format!("{}:/usr/bin/dptrace", bin.display()))
        .arg("--copy")
        .arg(format!("{}:/etc/dptrace-matrix.env", env_file.display()));
    if !entry.expect.field.is_empty() {
        cmd.arg("--copy").arg(format!("{}:{FIELD_SCRIPT_IN_GUEST}", root.join(FIELD_SCRIPT).display()));
        for component in field::components(&entry.expect.field) {
            cmd.arg("--field").arg(component);
        }
    }
    cmd.arg(root.join(GUEST_SCRIPT)).stdout(fs::File::create(&log)?).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let (mut kernel, mut accel) = (None, None);
    let stderr = child.stderr.take().context("run-in-vm.sh stderr")?;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("  | {line}");
        if let Some(k) = line.strip_prefix("run-in-vm: kernel: ") {
            kernel = Some(k.to_string());
        } else if let Some(a) = line.strip_prefix("run-in-vm: accel: ") {
            accel = Some(a.to_string());
        }
    }
    let status = child.wait()?;
    Ok(RunOutput {
        console: fs::read_to_string(&log).unwrap_or_default(),
        exit: status.code(),
        kernel: kernel
            .map_or_else(|| "(run-in-vm.sh did not say)".into(), |k| k.replace(&format!("{}/", root.display()), "")),
        accel,
        secs: started.elapsed().as_secs_f64(),
        log,
    })
}

// ---------------------------------------------------------------------------------- console

/// The sections matrix.sh printed, plus what run-in-vm.sh's /init said about modules.
#[derive(Debug, Default)]
struct Console {
    sections: BTreeMap<String, Section>,
    /// Section names in the order the guest printed them.
    order: Vec<String>,
    /// `DPTRACE-MATRIX-DONE` was seen: the guest script ran to its end.
    done: bool,
    modules_failed: Vec<String>,
    modules_excluded: Vec<String>,
    /// Section -> pid of the process that sent its test traffic (`DPTRACE-MATRIX-SENDER`).
    senders: BTreeMap<String, u64>,
    /// field.sh's `DPTRACE-FIELD-ROW` objects: a scenario's component, version, kernel.
    field_rows: Vec<Value>,
}

#[derive(Debug, Default)]
struct Section {
    lines: Vec<String>,
    rc: Option<i32>,
    /// How long the section's command took in the guest.
    ms: Option<u64>,
}

impl Console {
    fn parse(text: &str) -> Self {
        let mut console = Console::default();
        let mut open: Option<String> = None;
        for line in text.lines().map(str::trim_end) {
            if let Some(name) = marker(line, "DPTRACE-MATRIX-BEGIN ") {
                console.sections.insert(name.to_string(), Section::default());
                console.order.push(name.to_string());
                open = Some(name.to_string());
            } else if let Some(rest) = marker(line, "DPTRACE-MATRIX-END ") {
                // `NAME rc=N ms=M`
                let (name, fields) = rest.split_once(" rc=").unwrap_or((rest, ""));
                if let Some(section) = console.sections.get_mut(name) {
                    let mut fields = fields.split_whitespace();
                    section.rc = fields.next().and_then(|rc| rc.parse().ok());
                    section.ms = fields.find_map(|f| f.strip_prefix("ms=")).and_then(|ms| ms.parse().ok());
                }
                open = None;
            } else if marker(line, "DPTRACE-MATRIX-DONE").is_some() {
                console.done = true;
            } else if let Some(list) = marker(line, "DPTRACE-MODPROBE-FAILED:") {
                console.modules_failed = words(list);
            } else if let Some(list) = marker(line, "DPTRACE-MODULES-EXCLUDED:") {
                console.modules_excluded = words(list);
            } else if let Some(row) = marker(line, "DPTRACE-FIELD-ROW ") {
                if let Ok(row @ Value::Object(_)) = serde_json::from_str::<Value>(row) {
                    console.field_rows.push(row);
                }
            } else if let Some(sender) = marker(line, "DPTRACE-MATRIX-SENDER ") {
                // `SECTION PID`
                if let Some((section, pid)) = sender.rsplit_once(' ').and_then(|(s, p)| Some((s, p.parse().ok()?))) {
                    console.senders.insert(section.to_string(), pid);
                }
            } else if let Some(section) = open.as_ref().and_then(|name| console.sections.get_mut(name)) {
                if !is_kernel_message(line) {
                    section.lines.push(line.to_string());
                }
            }
        }
        console
    }

    fn lines(&self, section: &str) -> &[String] {
        self.sections.get(section).map_or(&[], |s| &s.lines)
    }

    fn rc(&self, section: &str) -> Option<i32> {
        self.sections.get(section).and_then(|s| s.rc)
    }

    /// The JSON objects of a section; lines that are not JSON (console noise) are skipped.
    fn json(&self, section: &str) -> Vec<Value> {
        self.lines(section)
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The first error line a section's command printed, to say why it failed.
    fn error_line(&self, section: &str) -> Option<String> {
        let stderr = self.lines(&format!("{section}.stderr"));
        stderr.iter().find(|l| l.contains("error")).or(stderr.last()).cloned()
    }
}

/// The text after `tag` when a console line holds it. `find`, not `starts_with`: a kernel
/// message printed without its newline may sit in front of the marker on the same line.
fn marker<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.find(tag).map(|i| line[i + tag.len()..].trim())
}

fn words(list: &str) -> Vec<String> {
    list.split_whitespace().map(String::from).collect()
}

/// `[   12.345678] ...`: a printk line that reached the console despite matrix.sh lowering
/// the console log level.
fn is_kernel_message(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else { return false };
    rest.split_once(']').is_some_and(|(stamp, _)| {
        let stamp = stamp.trim();
        !stamp.is_empty() && stamp.contains('.') && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

// ----------------------------------------------------------------------------------- judging

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verdict {
    /// A forced backend saw the test drops.
    Worked,
    /// A lab scenario got its expected diagnosis.
    Diagnosed,
    /// A lab scenario got its expected diagnosis, but the lab could not check all of it on this
    /// kernel (no BTF: no namespace, device or flow); `unchecked` says what.
    Degraded,
    NotDiagnosed,
    Failed,
    /// `dptrace check` says this kernel cannot attach the backend.
    Unsupported,
    /// This dptrace build rejects the backend name or the `--backend` flag.
    NotInDptrace,
    /// The guest never got to it (crash, timeout, lab aborted).
    NotRun,
    /// The lab says the scenario cannot be reproduced on this kernel.
    Skipped,
}

impl Verdict {
    /// Whether it counts as working. A degraded diagnosis does, where the matrix allows it
    /// (`expect.degraded`; expectation_failures checks that).
    fn is_good(self) -> bool {
        matches!(self, Verdict::Worked | Verdict::Diagnosed | Verdict::Degraded)
    }

    /// The name report.json uses.
    fn label(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

/// A forced backend run or a lab scenario on one kernel.
#[derive(Debug, Serialize)]
struct Outcome {
    name: String,
    verdict: Verdict,
    /// The matrix expects it to work here: if it does not, vm-test fails.
    expected: bool,
    detail: String,
    /// Lab scenarios: what the lab could not check on this kernel (a degraded diagnosis).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unchecked: Vec<String>,
    /// Lab scenarios that were skipped: the fact of the kernel that made them unreproducible.
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_fact: Option<String>,
    /// It is one of the reasons its row fails (shown in bold).
    #[serde(skip)]
    fails: bool,
}

impl Outcome {
    fn new(name: impl Into<String>, verdict: Verdict, expected: bool, detail: String) -> Self {
        Outcome { name: name.into(), verdict, expected, detail, unchecked: Vec::new(), skip_fact: None, fails: false }
    }
}

/// The backend `dptrace check` chose for a hook family.
#[derive(Debug, Serialize)]
struct Hook {
    /// Its `--backend` name (`tracepoint`).
    backend: String,
    /// What attached (`tracepoint skb:kfree_skb`).
    detail: String,
}

/// A `dptrace check` problem (warning or error).
#[derive(Debug, Serialize)]
struct CheckProblem {
    feature: String,
    severity: String,
    summary: String,
}

/// Where the time of one kernel went.
#[derive(Debug, Serialize)]
struct Stage {
    name: String,
    secs: f64,
}

/// What matrix.sh's `features` section says about a link kind or module.
#[derive(Debug, Serialize)]
struct Feature {
    present: bool,
    detail: String,
}

/// One kernel of the report.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    description: String,
    /// `host`, the Debian package and version (or tree) booted, or why it was skipped.
    kernel: String,
    status: Status,
    release: Option<String>,
    btf: Option<bool>,
    accel: Option<String>,
    /// Hook family -> the backend `dptrace check` says a session gets.
    hooks: BTreeMap<String, Hook>,
    check_exit: Option<i32>,
    /// `dptrace check` problems above `info`.
    problems: Vec<CheckProblem>,
    features: BTreeMap<String, Feature>,
    backends: Vec<Outcome>,
    scenarios: Vec<Outcome>,
    /// Field scenarios (vm/field.rs): `diagnosed` when the fault gave its finding or the
    /// healthy twin stayed quiet, with the tool's own outcome.
    field: Vec<Outcome>,
    /// The field suite's table rows of the scenarios that passed (component, version,
    /// scenario, kernel, result, matrix_row).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    field_rows: Vec<Value>,
    modules_failed: Vec<String>,
    modules_excluded: Vec<String>,
    /// The guest's sections that took measurable time, then `other` (initramfs, boot, the rest).
    stages: Vec<Stage>,
    /// Why this row fails vm-test (empty when it passes).
    failures: Vec<String>,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    /// A kernel the matrix builds itself: how it was built or found in the cache. Its time is
    /// not in `secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<KernelBuild>,
    /// From the start of the boot (or of the host checks) to the end of the guest.
    secs: f64,
    log: Option<PathBuf>,
}

impl Row {
    fn empty(name: &str, description: &str, kernel: String, status: Status) -> Self {
        Row {
            name: name.into(),
            description: description.into(),
            kernel,
            status,
            release: None,
            btf: None,
            accel: None,
            hooks: BTreeMap::new(),
            check_exit: None,
            problems: Vec::new(),
            features: BTreeMap::new(),
            backends: Vec::new(),
            scenarios: Vec::new(),
            field: Vec::new(),
            field_rows: Vec::new(),
            modules_failed: Vec::new(),
            modules_excluded: Vec::new(),
            stages: Vec::new(),
            failures: Vec::new(),
            skipped: None,
            build: None,
            secs: 0.0,
            log: None,
        }
    }

    /// A kernel that could not be booted: its build failed or its tree is missing.
    fn unbootable(entry: &KernelEntry, why: String) -> Self {
        let mut row = Row::empty(&entry.name, &entry.description, "not built".into(), Status::Failed);
        row.failures.push(why);
        row
    }

    fn skipped_host(description: &str, why: &str) -> Self {
        eprintln!("\n--- host: skipped: {why}");
        let mut row = Row::empty("host", description, "host".into(), Status::Skipped);
        row.skipped = Some(why.into());
        row
    }
}

/// Turns one run's console into a report row and checks it against the matrix's `expect`.
fn judge(name: &str, description: &str, expect: &Expect, run: RunOutput, in_vm: bool) -> Row {
    let console = Console::parse(&run.console);
    let check = console.json("check").into_iter().find(|v| v["type"] == "check");
    let mut row = Row::empty(name, description, run.kernel, Status::Passed);
    row.accel = run.accel;
    row.secs = run.secs;
    row.log = Some(run.log);
    row.modules_failed = console.modules_failed.clone();
    row.modules_excluded = console.modules_excluded.clone();
    row.check_exit = console.rc("check");
    read_check(&mut row, check.as_ref(), &console);
    row.features = features(&console);
    row.scenarios = lab_outcomes(&console, expect);
    row.backends = console
        .order
        .iter()
        .filter_map(|section| section.strip_prefix("backend:"))
        .filter(|spec| !spec.ends_with(".stderr"))
        .map(|spec| backend_outcome(spec, &console, check.as_ref(), expect))
        .collect();
    (row.field, row.field_rows) = field_outcomes(&console, expect, name);
    row.stages = stages(&console, run.secs);
    row.failures = expectation_failures(expect, &row, &console, check.as_ref(), run.exit, in_vm);
    if row.backends.iter().any(|o| o.name.starts_with("drops=") || o.name.starts_with("netfilter=")) {
        if let Err(why) = Topology::parse(console.lines("topology")) {
            row.failures.push(format!("forced runs: {why}"));
        }
    }
    // Failures name their scenario or backend first.
    let failures = &row.failures;
    for outcome in row.scenarios.iter_mut().chain(row.backends.iter_mut()).chain(row.field.iter_mut()) {
        let prefix = format!("{}: ", outcome.name);
        outcome.fails = failures.iter().any(|f| f.starts_with(&prefix));
    }
    if !row.failures.is_empty() {
        row.status = Status::Failed;
    }
    row
}

/// Kernel facts from `dptrace check --json` (and `uname -r` if check gave nothing).
fn read_check(row: &mut Row, check: Option<&Value>, console: &Console) {
    row.release = check
        .and_then(|c| c["kernel"]["release"].as_str())
        .or_else(|| console.lines("uname").first().map(String::as_str))
        .map(String::from);
    let Some(check) = check else { return };
    row.btf = check["kernel"]["btf"].as_bool();
    for hook in check["hooks"].as_array().into_iter().flatten() {
        let Some(family) = hook["family"].as_str() else { continue };
        let detail = hook["backend"].as_str().unwrap_or("?").to_string();
        let backend = hook["backend_id"].as_str().map_or_else(|| detail.clone(), String::from);
        row.hooks.insert(family.into(), Hook { backend, detail });
    }
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    for problem in check["problems"].as_array().into_iter().flatten().filter(|p| p["severity"] != "info") {
        row.problems.push(CheckProblem {
            feature: text(&problem["feature"]),
            severity: text(&problem["severity"]),
            summary: text(&problem["summary"]),
        });
    }
}

/// Guest time per stage: `check`, `lab`, the forced runs together as `backends`, and `other`
/// for what the guest did not time (initramfs build, boot, module loading, power-off).
fn stages(console: &Console, total_secs: f64) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for name in &console.order {
        let Some(ms) = console.sections[name].ms else { continue };
        let stage = if name.starts_with("backend:") {
            "backends"
        } else if name.starts_with("field") {
            "field"
        } else {
            name.as_str()
        };
        match stages.iter_mut().find(|s| s.name == stage) {
            Some(s) => s.secs += ms as f64 / 1000.0,
            None => stages.push(Stage { name: stage.into(), secs: ms as f64 / 1000.0 }),
        }
    }
    stages.retain(|s| s.secs >= 0.05);
    let timed: f64 = stages.iter().map(|s| s.secs).sum();
    stages.push(Stage { name: "other".into(), secs: (total_secs - timed).max(0.0) });
    stages
}

/// `KIND yes` / `KIND no: why` lines of the `features` section.
fn features(console: &Console) -> BTreeMap<String, Feature> {
    console
        .lines("features")
        .iter()
        .filter_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            let present = rest == "yes";
            let detail = rest.strip_prefix("no: ").unwrap_or(rest).to_string();
            Some((name.to_string(), Feature { present, detail }))
        })
        .collect()
}

/// One outcome per `lab-result` object, plus a `not-run` one for every expected scenario the
/// lab never reported. A scenario is diagnosed only where the lab says `diagnosed: true`; with
/// `degraded: true` it is `degraded`, and `unchecked` says what the lab could not check on this
/// kernel. (Results of a dptrace from before the lab said so have no `degraded`: not degraded.)
fn lab_outcomes(console: &Console, expect: &Expect) -> Vec<Outcome> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
    };
    let mut outcomes: Vec<Outcome> = console
        .json("lab")
        .iter()
        .filter(|v| v["type"] == "lab-result")
        .filter_map(|result| {
            let name = result["scenario"].as_str()?.to_string();
            let diagnosed = result["diagnosed"] == true;
            let skipped = result["skipped"] == true;
            let degraded = result["degraded"] == true;
            let rule = result["expected_rule"].as_str().unwrap_or("?");
            let unchecked = strings(&result["unchecked"]);
            let verdict = match (diagnosed, degraded, skipped) {
                (true, false, _) => Verdict::Diagnosed,
                (true, true, _) => Verdict::Degraded,
                (false, _, true) => Verdict::Skipped,
                (false, _, false) => Verdict::NotDiagnosed,
            };
            let detail = match verdict {
                Verdict::Diagnosed => format!("diagnosed as {rule}"),
                Verdict::Degraded => {
                    format!("diagnosed as {rule}, degraded: unchecked {}", or_none(unchecked.join(", ")))
                }
                _ => strings(&result["problems"]).join("; "),
            };
            let mut outcome = Outcome::new(name, verdict, false, detail);
            outcome.expected = expect.scenarios.contains(&outcome.name);
            outcome.unchecked = unchecked;
            outcome.skip_fact = result["skip_fact"].as_str().map(String::from);
            Some(outcome)
        })
        .collect();
    for name in &expect.scenarios {
        if !outcomes.iter().any(|o| &o.name == name) {
            let why = console.error_line("lab").unwrap_or_else(|| "the lab did not run".into());
            let detail = format!("no result (lab exit {}): {why}", exit_text(console.rc("lab")));
            outcomes.push(Outcome::new(name.clone(), Verdict::NotRun, true, detail));
        }
    }
    outcomes
}

/// One outcome per field scenario field.sh ran (section `field:ID`), plus a `not-run` one for
/// every expected scenario it did not; and the table rows of those that passed: field.sh's
/// `DPTRACE-FIELD-ROW`s for the scenario, with the verdict's text as `result`.
fn field_outcomes(console: &Console, expect: &Expect, matrix_row: &str) -> (Vec<Outcome>, Vec<Value>) {
    // A scenario field.sh repeated (a race it lost) counts once, with its last run.
    let mut ran: Vec<&str> = Vec::new();
    for id in console.order.iter().filter_map(|s| s.strip_prefix("field:")).filter(|id| !id.contains('.')) {
        if !ran.contains(&id) {
            ran.push(id);
        }
    }
    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for id in &ran {
        let section = format!("field:{id}");
        let output = console.json(&section);
        let tool = field::Tool::new(console.lines(&format!("{section}.tool")));
        let mut judgement = field::judge(id, &output, &tool);
        if console.rc(&section).is_some_and(|rc| rc != 0) {
            let why = console.error_line(&section).unwrap_or_default();
            judgement.problems.push(format!("dptrace trace exited {}: {why}", exit_text(console.rc(&section))));
        }
        let of_scenario: Vec<&Value> = console.field_rows.iter().filter(|r| r["id"] == *id).collect();
        if of_scenario.is_empty() {
            judgement.problems.push("field.sh printed no DPTRACE-FIELD-ROW (component and version)".into());
        }
        let passed = judgement.problems.is_empty();
        if passed {
            for r in of_scenario {
                let mut r = r.clone();
                if let Some(obj) = r.as_object_mut() {
                    obj.remove("id");
                    obj.insert("result".into(), judgement.result.clone().into());
                    obj.insert("matrix_row".into(), matrix_row.into());
                }
                rows.push(r);
            }
        }
        let (verdict, detail) = if passed {
            (Verdict::Diagnosed, judgement.result)
        } else {
            (Verdict::NotDiagnosed, judgement.problems.join("; "))
        };
        outcomes.push(Outcome::new(*id, verdict, expect.field.iter().any(|f| f == id), detail));
    }
    // Why a component's scenarios did not run: its setup's FAIL: lines.
    let setup_failures: Vec<&str> = console
        .order
        .iter()
        .filter(|s| s.starts_with("field-setup:") && !s.ends_with(".stderr"))
        .flat_map(|s| console.lines(s))
        .filter_map(|l| l.strip_prefix("FAIL: "))
        .collect();
    for id in expect.field.iter().filter(|id| !ran.contains(&id.as_str())) {
        let why = if !console.sections.contains_key("field") {
            "field.sh did not run (matrix.sh did not get to it)".to_string()
        } else if !setup_failures.is_empty() {
            format!("field.sh did not run it: {}", setup_failures.join("; "))
        } else {
            "field.sh did not run it".to_string()
        };
        outcomes.push(Outcome::new(id.clone(), Verdict::NotRun, true, why));
    }
    (outcomes, rows)
}

/// Judges the forced run `backend:FAMILY=NAME`.
fn backend_outcome(spec: &str, console: &Console, check: Option<&Value>, expect: &Expect) -> Outcome {
    let (verdict, detail) = backend_verdict(spec, console, check);
    Outcome::new(spec, verdict, expect.backend(spec), detail)
}

/// A forced run counts only with evidence of matrix.sh's own test traffic: tied to the
/// namespace, device, addresses, ports and sender its `topology` section names.
fn backend_verdict(spec: &str, console: &Console, check: Option<&Value>) -> (Verdict, String) {
    let section = format!("backend:{spec}");
    let rc = console.rc(&section);
    let stderr = console.lines(&format!("{section}.stderr"));
    if rc == Some(2) && stderr.iter().any(|l| rejects_backend(l)) {
        return (Verdict::NotInDptrace, format!("this dptrace does not accept --backend {spec}"));
    }
    let (family, backend) = spec.split_once('=').unwrap_or(("drops", spec));
    let output = console.json(&section);
    let seen = Topology::parse(console.lines("topology")).and_then(|topo| match family {
        "netfilter" => netfilter_told_apart(&output, backend, &topo),
        "links" => link_failure_explained(&output, &topo),
        _ => test_drops_seen(&output, &topo, console.senders.get(&section).copied()),
    });
    let why = match seen {
        Ok(seen) => return (Verdict::Worked, seen),
        Err(why) => why,
    };
    if let Some(reason) = check.and_then(|c| unavailable_in_check(c, family, backend)) {
        return (Verdict::Unsupported, reason);
    }
    let error = console.error_line(&section).filter(|l| l.contains("error"));
    let error = error.map(|e| format!("; {e}")).unwrap_or_default();
    (Verdict::Failed, format!("{why} (exit {}){error}", exit_text(rc)))
}

/// clap's refusal of `--backend` (flag unknown, or backend name unknown): exit 2 with this.
fn rejects_backend(stderr_line: &str) -> bool {
    stderr_line.contains("unexpected argument '--backend'")
        || (stderr_line.contains("invalid value") && stderr_line.contains("'--backend"))
}

/// `dptrace check` lists every backend it probed, with why it could not attach.
fn unavailable_in_check(check: &Value, family: &str, backend: &str) -> Option<String> {
    let probes = check["backends"].as_array()?;
    // Older reports have no `family`: then the backend name alone decides.
    probes
        .iter()
        .find(|b| {
            (b["family"] == family || b["family"].is_null()) && b["backend"] == backend && b["available"] == false
        })
        .map(|b| {
            let detail = b["detail"].as_str().unwrap_or("not available");
            format!("dptrace check: {detail}")
        })
}

/// Everything in `expect` that did not hold, plus failures of the run itself.
fn expectation_failures(
    expect: &Expect,
    row: &Row,
    console: &Console,
    check: Option<&Value>,
    exit: Option<i32>,
    in_vm: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    if !console.done {
        failures
            .push(format!("the guest script did not finish (exit {}; 124 = timeout, 125 = panic)", exit_text(exit)));
    }
    match row.check_exit {
        Some(0 | 1) => {}
        rc => failures.push(format!(
            "dptrace check failed (exit {}): {}",
            exit_text(rc),
            console.error_line("check").unwrap_or_default()
        )),
    }
    // matrix.sh unmounts tracefs in a VM: dptrace must mount it itself.
    if in_vm && check.is_some_and(|c| c["tracefs_mounted_by_dptrace"] != true) {
        failures.push("dptrace did not mount tracefs itself".into());
    }
    if let (Some(want), Some(got)) = (expect.btf, row.btf) {
        if want != got {
            failures.push(format!("BTF: expected {}, dptrace check says {}", yes_no(want), yes_no(got)));
        }
    }
    for outcome in
        row.scenarios.iter().chain(&row.backends).chain(&row.field).filter(|o| o.expected && !o.verdict.is_good())
    {
        failures.push(format!("{}: {}: {}", outcome.name, outcome.verdict.label(), outcome.detail));
    }
    // A degraded diagnosis is what a kernel without BTF allows, and only where the matrix
    // says so: never on a kernel with BTF, never for a scenario it does not list.
    let has_btf = expect.btf == Some(true) || row.btf == Some(true);
    for outcome in row.scenarios.iter().filter(|o| o.verdict == Verdict::Degraded) {
        if has_btf {
            failures.push(format!("{}: degraded on a kernel with BTF: {}", outcome.name, outcome.detail));
        } else if outcome.expected && !expect.degraded.contains(&outcome.name) {
            failures.push(format!(
                "{}: degraded, and the matrix does not allow it here (expect.degraded): {}",
                outcome.name, outcome.detail
            ));
        }
    }
    for spec in expect.backend_specs().filter(|s| !row.backends.iter().any(|o| &o.name == s)) {
        failures.push(format!("{spec}: the forced run did not happen"));
    }
    for feature in &expect.check_problems {
        if !row.problems.iter().any(|p| &p.feature == feature) {
            failures.push(format!("dptrace check did not report the expected problem `{feature}`"));
        }
    }
    for (feature, &want) in &expect.features {
        match row.features.get(feature) {
            Some(f) if f.present == want => {}
            Some(f) => failures.push(format!("feature {feature}: expected {}, got: {}", yes_no(want), f.detail)),
            None => failures.push(format!("feature {feature}: not probed")),
        }
    }
    failures
}

fn exit_text(rc: Option<i32>) -> String {
    rc.map_or_else(|| "unknown".into(), |rc| rc.to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

// ------------------------------------------------------------------------------------ report

#[derive(Debug, Serialize)]
struct Report {
    total_secs: f64,
    /// `dptrace --version` of the binary every row ran.
    dptrace: String,
    rows: Vec<Row>,
}

fn dptrace_version(bin: &Path) -> String {
    let output = Command::new(bin).arg("--version").output();
    let version = output.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    if version.is_empty() {
        bin.display().to_string()
    } else {
        version
    }
}

impl Report {
    /// The compatibility table, then what failed and why, per kernel.
    fn markdown(&self) -> String {
        let backends = self.columns(|r| &r.backends);
        let scenarios = self.columns(|r| &r.scenarios);
        let field = self.columns(|r| &r.field);
        let families: Vec<String> = self.rows.iter().flat_map(|r| r.hooks.keys().cloned()).fold(Vec::new(), uniq);
        let mut header = vec!["kernel".to_string(), "release".into(), "BTF".into()];
        header.extend(families.iter().map(|f| format!("{f} hook (check)")));
        header.extend(backends.iter().map(|b| format!("forced {b}")));
        header.extend(scenarios.iter().map(|s| format!("lab {s}")));
        header.extend(field.iter().map(|s| format!("field {s}")));
        header.extend(["features missing".into(), "check problems".into(), "time".into(), "result".into()]);

        let mut md = format!("# dptrace kernel-compatibility matrix\n\n{}, `cargo xtask vm-test`\n\n", self.dptrace);
        md.push_str(&table_line(&header));
        md.push_str(&table_line(&vec!["---".to_string(); header.len()]));
        for row in &self.rows {
            md.push_str(&table_line(&self.cells(row, &families, &backends, &scenarios, &field)));
        }
        md.push_str(
            "\nyes: the forced run saw the test's own drops (UDP to a closed port in the test's server \
             namespace, IPv4 and IPv6; without BTF: by location, reason and sender) / the scenario was \
             diagnosed; degraded: diagnosed with what this kernel shows (the notes say what could not be \
             checked); no: it did not; unsupported: `dptrace check` says this kernel cannot attach that \
             backend; n/a: this dptrace has no such backend; skipped: the lab cannot reproduce the scenario \
             on this kernel; field: yes: the real component's fault gave dptrace's expected finding and \
             the tool failed as in the field report, or its healthy twin passed without a warning or error \
             (the notes say what dptrace and the tool said); **bold**: the matrix expects otherwise, so \
             vm-test fails.\n",
        );
        md.push_str(&self.kernels());
        md.push_str(&self.notes());
        // Kernel builds happen once per machine (their cache outlives the clone): the budget is
        // for the matrix itself.
        let builds: f64 = self.rows.iter().filter_map(|r| r.build.as_ref()).filter(|b| !b.cached).map(|b| b.secs).sum();
        let matrix = self.total_secs - builds;
        let over = if matrix > BUDGET_SECS { " — OVER the 15 min budget" } else { "" };
        if builds > 0.0 {
            md.push_str(&format!(
                "\nTotal: {:.0} s: kernel builds {builds:.0} s, the matrix {matrix:.0} s{over}.\n",
                self.total_secs
            ));
        } else {
            md.push_str(&format!("\nTotal: {:.0} s{over}.\n", self.total_secs));
        }
        md
    }

    /// Names of a per-row outcome list, in order of first appearance.
    fn columns(&self, pick: impl Fn(&Row) -> &Vec<Outcome>) -> Vec<String> {
        self.rows.iter().flat_map(|r| pick(r).iter().map(|o| o.name.clone())).fold(Vec::new(), uniq)
    }

    fn cells(
        &self,
        row: &Row,
        families: &[String],
        backends: &[String],
        scenarios: &[String],
        field: &[String],
    ) -> Vec<String> {
        let dash = || "—".to_string();
        let mut cells = vec![
            row.name.clone(),
            row.release.clone().unwrap_or_else(dash),
            row.btf.map_or_else(dash, |b| yes_no(b).into()),
        ];
        cells.extend(families.iter().map(|f| row.hooks.get(f).map_or_else(dash, |h| h.backend.clone())));
        let cell = |list: &[Outcome], name: &String| list.iter().find(|o| &o.name == name).map_or_else(dash, cell_text);
        cells.extend(backends.iter().map(|b| cell(&row.backends, b)));
        cells.extend(scenarios.iter().map(|s| cell(&row.scenarios, s)));
        cells.extend(field.iter().map(|s| cell(&row.field, s)));
        let missing: Vec<&str> = row.features.iter().filter(|(_, f)| !f.present).map(|(n, _)| n.as_str()).collect();
        let problems: Vec<&str> = row.problems.iter().map(|p| p.feature.as_str()).collect();
        // A row that never ran (skipped host, kernel that could not be built) has no figures.
        let ran = row.log.is_some();
        cells.push(if ran { or_none(missing.join(", ")) } else { dash() });
        cells.push(if ran { or_none(problems.join(", ")) } else { dash() });
        cells.push(if ran { format!("{:.0} s", row.secs) } else { dash() });
        cells.push(
            match row.status {
                Status::Passed => "passed",
                Status::Failed => "**FAILED**",
                Status::Skipped => "skipped",
            }
            .into(),
        );
        cells
    }

    /// What each row booted and where its time went.
    fn kernels(&self) -> String {
        let mut text = String::from("\nKernels:\n");
        for row in &self.rows {
            let mut line = format!("- {}: {}; {}", row.name, row.description, row.kernel);
            if let Some(build) = &row.build {
                let how = if build.cached { "found in its cache by" } else { "built by" };
                line.push_str(&format!("; kernel {how} build-kernel.sh {} ({:.0} s)", build.config, build.secs));
            }
            if row.status != Status::Skipped && row.log.is_some() {
                let stages: Vec<String> = row.stages.iter().map(|s| format!("{} {:.1} s", s.name, s.secs)).collect();
                line.push_str(&format!("; {:.0} s ({})", row.secs, stages.join(", ")));
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// Per kernel: failures, skip reasons, module surprises. (`dptrace check`'s problems are
    /// in the table by name and in report.json in full: their text is the same on every kernel.)
    fn notes(&self) -> String {
        let mut notes = String::new();
        for row in &self.rows {
            let mut items: Vec<String> = row.failures.iter().map(|f| format!("FAILED: {f}")).collect();
            items.extend(row.skipped.iter().map(|s| format!("skipped: {s}")));
            if !row.modules_excluded.is_empty() {
                items.push(format!("modules left out: {}", row.modules_excluded.join(", ")));
            }
            if !row.modules_failed.is_empty() {
                items.push(format!("modules that failed to load: {}", row.modules_failed.join(", ")));
            }
            if let Some(accel) = row.accel.as_ref().filter(|a| *a != "tcg") {
                items.push(format!("accelerator: {accel}"));
            }
            for outcome in row.scenarios.iter().filter(|o| o.verdict == Verdict::Degraded) {
                items.push(format!(
                    "{} degraded: the lab could not check {}",
                    outcome.name,
                    or_none(outcome.unchecked.join(", "))
                ));
            }
            for outcome in row.field.iter().filter(|o| o.verdict == Verdict::Diagnosed) {
                items.push(format!("field {}: {}", outcome.name, outcome.detail));
            }
            for outcome in row.scenarios.iter().filter(|o| o.verdict == Verdict::Skipped) {
                let fact = outcome.skip_fact.as_deref().map(|f| format!(" [{f}]")).unwrap_or_default();
                items.push(format!("{} skipped{fact}: {}", outcome.name, outcome.detail));
            }
            if items.is_empty() {
                continue;
            }
            notes.push_str(&format!("\n{}:\n", row.name));
            for item in items {
                notes.push_str(&format!("- {item}\n"));
            }
        }
        notes
    }
}

fn cell_text(outcome: &Outcome) -> String {
    let text = match outcome.verdict {
        Verdict::Worked | Verdict::Diagnosed => "yes",
        Verdict::Degraded => "degraded",
        Verdict::Failed | Verdict::NotDiagnosed | Verdict::NotRun => "no",
        Verdict::Unsupported => "unsupported",
        Verdict::NotInDptrace => "n/a",
        Verdict::Skipped => "skipped",
    };
    if outcome.fails {
        format!("**{text}**")
    } else {
        text.into()
    }
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "none".into()
    } else {
        text
    }
}

fn uniq(mut acc: Vec<String>, item: String) -> Vec<String> {
    if !acc.contains(&item) {
        acc.push(item);
    }
    acc
}

fn table_line(cells: &[String]) -> String {
    format!("| {} |\n", cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    #[test]
    fn the_real_matrix_parses_and_validates() {
        let matrix = Matrix::load(&workspace().join(MATRIX)).unwrap();
        let names: Vec<&str> = matrix.kernels.iter().map(|e| e.name.as_str()).collect();
        for name in ["6.1-amd64", "6.1-cloud", "6.1-no-wireguard", "6.1-no-br-netfilter", "6.1-nobtf"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let nowg = matrix.kernels.iter().find(|e| e.name == "6.1-no-wireguard").unwrap();
        assert!(nowg.boot_args(None).windows(2).any(|w| w == ["--exclude-module", "wireguard"]));
        assert!(matrix.select(&["nope".into()]).unwrap_err().to_string().contains("6.1-amd64"));
        // The no-BTF kernel is built by the matrix from a config fragment in the repository.
        let nobtf = matrix.kernels.iter().find(|e| e.name == "6.1-nobtf").unwrap();
        let config = nobtf.build.as_deref().expect("6.1-nobtf is a `build` entry");
        assert!(workspace().join(KERNEL_CONFIGS).join(format!("{config}.config")).is_file());
        let dir = Path::new("/var/cache/dptrace/kernels/6.1-nobtf-0123");
        assert_eq!(nobtf.boot_args(Some(dir)), ["--kernel-dir", "/var/cache/dptrace/kernels/6.1-nobtf-0123"]);
    }

    #[test]
    fn bad_matrices_are_refused() {
        let base = "[defaults]\ntry_backends = []\ntimeout_secs = 1\n[host]\n";
        let kernel = |rest: &str| format!("{base}[[kernel]]\nname = \"a\"\ndescription = \"\"\n{rest}");
        let error = |rest: &str| Matrix::parse(&kernel(rest)).unwrap_err().to_string();
        assert!(error("package = \"p\"\ndir = \"d\"\n").contains("exactly one"));
        assert!(error("package = \"p\"\nbuild = \"6.1-nobtf\"\n").contains("exactly one"));
        assert!(error("build = \"../x; rm -rf /\"\n").contains("names a config"));
        // `optional` is gone: a kernel the matrix lists runs (and is built if need be).
        assert!(Matrix::parse(&kernel("dir = \"d\"\noptional = true\n")).is_err());
        assert!(Matrix::parse(&kernel("package = \"p\"\nexclude_module = []\n")).is_err());
        let degraded = "build = \"x\"\n[kernel.expect]\nscenarios = [\"s\"]\n";
        assert!(Matrix::parse(&kernel(&format!("{degraded}degraded = [\"s\"]\n"))).is_ok());
        assert!(error(&format!("{degraded}degraded = [\"t\"]\n")).contains("not in its `scenarios`"));
        assert!(error(&format!("{degraded}btf = true\ndegraded = [\"s\"]\n")).contains("BTF"));
    }

    const TOPOLOGY: &str = "DPTRACE-MATRIX-BEGIN topology
server_netns 4026532500
server_dev s0
client_netns 4026532400
client_dev c0
server_v4 10.77.0.2
server_v6 fd00:77::2
port 9999
sender_comm dpt-udp-send
nft_drop_port 9998
nft_reject_port 6443
bogus_link dpt-bogus
DPTRACE-MATRIX-END topology rc=0 ms=3
";

    const CONSOLE: &str = r#"SeaBIOS
DPTRACE-MODPROBE-FAILED: nft_foo
DPTRACE-MODULES-EXCLUDED: wireguard
DPTRACE-MATRIX-BEGIN check
{"type":"check","kernel":{"release":"6.1.0-56-amd64","btf":true},"tracefs_mounted_by_dptrace":true,"hooks":[{"family":"drops","backend_id":"tracepoint","backend":"tracepoint skb:kfree_skb"}],"backends":[{"backend":"kprobe","available":false,"detail":"no kprobes"}],"problems":[{"severity":"info","feature":"x","summary":"s"}]}
[   12.345678] some kernel message
DPTRACE-MATRIX-END check rc=1 ms=1500
DPTRACE-MATRIX-BEGIN features
wireguard no: Error: Unknown device type.
vxlan yes
DPTRACE-MATRIX-END features rc=0
DPTRACE-MATRIX-BEGIN lab
{"type":"lab-result","scenario":"udp-closed-port","expected_rule":"no-listener","diagnosed":true,"problems":[]}
{"type":"lab-result","scenario":"node-icmp-blocked","expected_rule":"netfilter-drop","diagnosed":false,"problems":["no finding"]}
DPTRACE-MATRIX-END lab rc=1
TOPOLOGY
DPTRACE-MATRIX-BEGIN backend:drops=tracepoint
{"type":"event","kind":"drop","reason":"NO_SOCKET","netns":4026532500,"device":"s0","flow":{"dst":"10.77.0.2","dport":9999}}
{"type":"event","kind":"drop","reason":"NO_SOCKET","netns":4026532500,"device":"s0","flow":{"dst":"fd00:77::2","dport":9999}}
{"type":"summary","hooks":[{"family":"drops","coverage":{"reason":true,"headers":true,"device_and_netns":true}}]}
DPTRACE-MATRIX-END backend:drops=tracepoint rc=0
DPTRACE-MATRIX-SENDER backend:drops=tracepoint 321
DPTRACE-MATRIX-BEGIN backend:drops=kprobe
DPTRACE-MATRIX-END backend:drops=kprobe rc=2
DPTRACE-MATRIX-BEGIN backend:drops=kprobe.stderr
dptrace: error: no backend could attach the drops hooks
DPTRACE-MATRIX-END backend:drops=kprobe.stderr rc=0
DPTRACE-MATRIX-BEGIN backend:drops=fentry
DPTRACE-MATRIX-END backend:drops=fentry rc=2
DPTRACE-MATRIX-BEGIN backend:drops=fentry.stderr
error: unexpected argument '--backend' found
DPTRACE-MATRIX-END backend:drops=fentry.stderr rc=0
DPTRACE-MATRIX-DONE
"#;

    fn console() -> String {
        CONSOLE.replace("TOPOLOGY\n", TOPOLOGY)
    }

    fn expect() -> Expect {
        let mut expect = Expect { btf: Some(true), ..Expect::default() };
        expect.scenarios = vec!["udp-closed-port".into(), "node-icmp-blocked".into()];
        expect.backends.insert("drops".into(), vec!["tracepoint".into(), "fentry".into()]);
        expect.features.insert("wireguard".into(), false);
        expect
    }

    fn run(console: String) -> RunOutput {
        RunOutput {
            console,
            exit: Some(0),
            kernel: "pkg".into(),
            accel: Some("tcg".into()),
            secs: 20.0,
            log: "x.log".into(),
        }
    }

    fn verdict(list: &[Outcome], name: &str) -> Verdict {
        list.iter().find(|o| o.name == name).unwrap().verdict
    }

    #[test]
    fn console_sections_skip_kernel_messages() {
        let console = Console::parse(&console());
        assert!(console.done);
        assert_eq!(console.rc("check"), Some(1));
        assert_eq!(console.json("check").len(), 1);
        assert_eq!(console.lines("check").len(), 1);
        assert_eq!(console.modules_excluded, ["wireguard"]);
        assert_eq!(console.senders["backend:drops=tracepoint"], 321);
        assert!(Topology::parse(console.lines("topology")).is_ok());
        assert!(is_kernel_message("[    1.000000] x") && !is_kernel_message("[x] y") && !is_kernel_message("{}"));
    }

    #[test]
    fn judging_follows_the_expectations() {
        let row = judge("k", "d", &expect(), run(console()), true);
        assert_eq!(verdict(&row.backends, "drops=tracepoint"), Verdict::Worked);
        assert_eq!(verdict(&row.backends, "drops=kprobe"), Verdict::Unsupported);
        assert_eq!(verdict(&row.backends, "drops=fentry"), Verdict::NotInDptrace);
        assert_eq!(verdict(&row.scenarios, "node-icmp-blocked"), Verdict::NotDiagnosed);
        assert_eq!(row.hooks["drops"].detail, "tracepoint skb:kfree_skb");
        assert_eq!(row.status, Status::Failed);
        // fentry (expected, not in this dptrace) and node-icmp-blocked fail; kprobe is not expected.
        assert_eq!(row.failures.len(), 2, "{:?}", row.failures);
        assert_eq!(row.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["check", "other"]);
        assert_eq!(row.stages[1].secs, 18.5);
        let md = Report { total_secs: 1.0, dptrace: "dptrace 0.1.0".into(), rows: vec![row] }.markdown();
        assert!(md.contains("| k | 6.1.0-56-amd64 | yes | tracepoint | yes | unsupported | **n/a** |"), "{md}");
    }

    #[test]
    fn foreign_test_drops_do_not_count() {
        // The same two drops, in the host's namespace instead of the test's server namespace.
        let foreign = console().replace("\"netns\":4026532500", "\"netns\":4026531840");
        let row = judge("k", "d", &expect(), run(foreign), true);
        assert_eq!(verdict(&row.backends, "drops=tracepoint"), Verdict::Failed);
        assert!(row
            .failures
            .iter()
            .any(|f| f.starts_with("drops=tracepoint: failed: ") && f.contains("not in the test's")));
        // Without matrix.sh's topology nothing ties the drops to the test.
        let untied = console().replace(TOPOLOGY, "");
        let row = judge("k", "d", &expect(), run(untied), true);
        assert_eq!(verdict(&row.backends, "drops=tracepoint"), Verdict::Failed);
        assert!(row.failures.iter().any(|f| f.contains("topology has no `server_netns`")), "{:?}", row.failures);
    }

    /// The lab's results as a newer dptrace gives them, with `degraded` and `unchecked`.
    fn degraded_console(degraded: bool) -> String {
        let result = format!(
            r#"{{"type":"lab-result","scenario":"node-icmp-blocked","expected_rule":"netfilter-drop","diagnosed":true,"degraded":{degraded},"unchecked":["netns","device"],"problems":[]}}"#
        );
        let skipped = r#"{"type":"lab-result","scenario":"vxlan-overlay","expected_rule":"path","diagnosed":false,"skipped":true,"skip_fact":"no-btf","problems":["packets cannot be followed without BTF"]}"#;
        let old = r#"{"type":"lab-result","scenario":"node-icmp-blocked","expected_rule":"netfilter-drop","diagnosed":false,"problems":["no finding"]}"#;
        console().replace(old, &format!("{result}\n{skipped}"))
    }

    #[test]
    fn degraded_diagnoses_are_shown_and_allowed_only_where_listed() {
        let mut nobtf = expect();
        nobtf.btf = Some(false);
        let nobtf_console = || degraded_console(true).replace(r#""btf":true"#, r#""btf":false"#);
        let row = judge("k", "d", &nobtf, run(nobtf_console()), true);
        assert_eq!(verdict(&row.scenarios, "node-icmp-blocked"), Verdict::Degraded);
        let degraded = row.scenarios.iter().find(|o| o.name == "node-icmp-blocked").unwrap();
        assert_eq!(degraded.unchecked, ["netns", "device"]);
        assert!(row
            .failures
            .iter()
            .any(|f| f.starts_with("node-icmp-blocked: degraded, and the matrix does not allow")));
        let skipped = row.scenarios.iter().find(|o| o.name == "vxlan-overlay").unwrap();
        assert_eq!((skipped.verdict, skipped.skip_fact.as_deref()), (Verdict::Skipped, Some("no-btf")));

        // Listed in expect.degraded: it passes, and the report says "degraded", not "yes".
        nobtf.degraded = vec!["node-icmp-blocked".into()];
        let row = judge("k", "d", &nobtf, run(nobtf_console()), true);
        assert!(!row.failures.iter().any(|f| f.starts_with("node-icmp-blocked")), "{:?}", row.failures);
        let md = Report { total_secs: 1.0, dptrace: "d".into(), rows: vec![row] }.markdown();
        assert!(md.contains("| degraded |"), "{md}");
        assert!(md.contains("node-icmp-blocked degraded: the lab could not check netns, device"), "{md}");
        assert!(md.contains("vxlan-overlay skipped [no-btf]"), "{md}");

        // On a kernel with BTF a degraded scenario fails, listed or not.
        let row = judge("k", "d", &expect(), run(degraded_console(true)), true);
        assert!(row.failures.iter().any(|f| f.starts_with("node-icmp-blocked: degraded on a kernel with BTF")));
        let md = Report { total_secs: 1.0, dptrace: "d".into(), rows: vec![row] }.markdown();
        assert!(md.contains("| **degraded** |"), "{md}");

        // `degraded: false` (and a missing `degraded`, from an older dptrace) is a full diagnosis.
        let row = judge("k", "d", &expect(), run(degraded_console(false)), true);
        assert_eq!(verdict(&row.scenarios, "node-icmp-blocked"), Verdict::Diagnosed);
    }

    #[test]
    fn a_kernel_that_cannot_be_built_fails_its_row() {
        let matrix = Matrix::parse(
            "[defaults]\ntry_backends = []\ntimeout_secs = 1\n[host]\n[[kernel]]\nname = \"a\"\ndescription = \"d\"\ndir = \"/nonexistent\"\n",
        )
        .unwrap();
        let entry = &matrix.kernels[0];
        let why = entry.kernel_dir(Path::new("/"), Path::new("/tmp")).unwrap_err();
        let row = Row::unbootable(entry, format!("{why:#}"));
        assert_eq!(row.status, Status::Failed);
        assert!(row.failures[0].contains("no kernel in /nonexistent"), "{:?}", row.failures);
        let md = Report { total_secs: 1.0, dptrace: "d".into(), rows: vec![row] }.markdown();
        assert!(md.contains("| a | — | — | — | — | — | **FAILED** |"), "{md}");
        // A `build` entry whose config is not in the repository fails before anything runs.
        let matrix = Matrix::parse(
            "[defaults]\ntry_backends = []\ntimeout_secs = 1\n[host]\n[[kernel]]\nname = \"b\"\ndescription = \"d\"\nbuild = \"no-such-config\"\n",
        )
        .unwrap();
        let why = matrix.kernels[0].kernel_dir(&workspace(), Path::new("/tmp")).unwrap_err();
        assert!(why.to_string().contains("no kernel config"), "{why}");
        assert!(md.contains("- FAILED: no kernel in /nonexistent"), "{md}");
    }
}

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

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::step;

const MATRIX: &str = "vm-images/matrix.toml";
const GUEST_SCRIPT: &str = "vm-images/guests/matrix.sh";
const RUN_IN_VM: &str = "vm-images/run-in-vm.sh";
const OUT_DIR: &str = "target/vm-test";
/// Where matrix.sh's forced runs send UDP that nothing receives (its `SERVER_V4`, `SERVER_V6`
/// and `PORT`): each backend must report these drops.
const TEST_DSTS: [&str; 2] = ["10.77.0.2", "fd00:77::2"];
const TEST_PORT: u64 = 9999;
/// The whole matrix should fit in this (issue 3); longer runs are reported, not failed.
const BUDGET_SECS: f64 = 15.0 * 60.0;

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Default)]
pub struct VmTestArgs {
    /// Matrix entries to boot, by name (see vm-images/matrix.toml). Default: every entry, with
    /// optional kernels that are not built yet skipped.
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
    let selected = matrix.select(root, &args.kernels)?;
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
        if !entry.is_built(root) {
            rows.push(Row::skipped(entry));
            continue;
        }
        eprintln!("\n--- {}: {}", entry.name, entry.description);
        let run = run_vm(root, bin, &matrix, entry, &out_dir)?;
        rows.push(judge(&entry.name, &entry.description, &entry.expect, run, true));
    }

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
    #[serde(default)]
    optional: bool,
    /// The command that makes `dir`.
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
        for (i, entry) in self.kernels.iter().enumerate() {
            let name = &entry.name;
            if self.kernels[..i].iter().any(|e| &e.name == name) {
                bail!("kernel `{name}` is listed twice");
            }
            if entry.package.is_some() == entry.dir.is_some() {
                bail!("kernel `{name}`: give exactly one of `package` and `dir`");
            }
            if entry.optional && (entry.dir.is_none() || entry.build.is_none()) {
                bail!("kernel `{name}`: an optional kernel needs `dir` and the `build` command that makes it");
            }
            for spec in entry.expect.backend_specs().chain(self.defaults.try_backends.iter().cloned()) {
                if !spec.contains('=') {
                    bail!("kernel `{name}`: backend `{spec}` is not FAMILY=NAME");
                }
            }
        }
        Ok(())
    }

    /// The entries to run: the named ones, or all. Naming an unbuilt optional kernel is an
    /// error (the user asked for it), while running "all" just skips it.
    fn select(&self, root: &Path, names: &[String]) -> anyhow::Result<Vec<&KernelEntry>> {
        if names.is_empty() {
            return Ok(self.kernels.iter().collect());
        }
        let known = || self.kernels.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ");
        names
            .iter()
            .map(|name| {
                let entry = self
                    .kernels
                    .iter()
                    .find(|e| &e.name == name)
                    .with_context(|| format!("no kernel `{name}` in {MATRIX}; known: {}", known()))?;
                if !entry.is_built(root) {
                    bail!("kernel `{name}` is {}", entry.not_built_note());
                }
                Ok(entry)
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
    /// Packages are fetched on demand; a `dir` must exist already. A tree made by a `build`
    /// command counts once it holds `.complete`, which build-kernel.sh writes last (a build
    /// running right now leaves a half-installed tree); a hand-made tree needs a boot/vmlinuz-*.
    fn is_built(&self, root: &Path) -> bool {
        let Some(dir) = &self.dir else { return true };
        let dir = root.join(dir);
        if self.build.is_some() {
            return dir.join(".complete").is_file();
        }
        fs::read_dir(dir.join("boot"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    }

    fn not_built_note(&self) -> String {
        let dir = self.dir.as_deref().unwrap_or("?");
        format!("not built (no finished kernel tree in {dir}); build with: {}", self.build.as_deref().unwrap_or("?"))
    }

    /// The `run-in-vm.sh` options that pick this kernel and its module set.
    fn boot_args(&self, root: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(package) = &self.package {
            args.extend(["--kernel-pkg".to_string(), package.clone()]);
        }
        if let Some(dir) = &self.dir {
            args.extend(["--kernel-dir".to_string(), root.join(dir).display().to_string()]);
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
fn run_vm(root: &Path, bin: &Path, matrix: &Matrix, entry: &KernelEntry, out_dir: &Path) -> anyhow::Result<RunOutput> {
    let log = out_dir.join(format!("{}.log", entry.name));
    // Settings for the guest script, which sources /etc/dptrace-matrix.env.
    let env_file = out_dir.join(format!("{}.env", entry.name));
    fs::write(&env_file, format!("DPTRACE_MATRIX_BACKENDS=\"{}\"\n", matrix.backends_for(&entry.expect).join(" ")))?;
    let timeout = entry.timeout_secs.unwrap_or(matrix.defaults.timeout_secs);

    let mut cmd = Command::new(root.join(RUN_IN_VM));
    cmd.args(entry.boot_args(root))
        .arg("--timeout")
        .arg(timeout.to_string())
        .arg("--copy")
        .arg(format!("{}:/usr/bin/dptrace", bin.display()))
        .arg("--copy")
        .arg(format!("{}:/etc/dptrace-matrix.env", env_file.display()))
        .arg(root.join(GUEST_SCRIPT))
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::piped());
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
    fn is_good(self) -> bool {
        matches!(self, Verdict::Worked | Verdict::Diagnosed)
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
    modules_failed: Vec<String>,
    modules_excluded: Vec<String>,
    /// The guest's sections that took measurable time, then `other` (initramfs, boot, the rest).
    stages: Vec<Stage>,
    /// Why this row fails vm-test (empty when it passes).
    failures: Vec<String>,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
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
            modules_failed: Vec::new(),
            modules_excluded: Vec::new(),
            stages: Vec::new(),
            failures: Vec::new(),
            skipped: None,
            secs: 0.0,
            log: None,
        }
    }

    fn skipped(entry: &KernelEntry) -> Self {
        let note = entry.not_built_note();
        eprintln!("\n--- {}: skipped: {note}", entry.name);
        let mut row = Row::empty(&entry.name, &entry.description, "not built".into(), Status::Skipped);
        row.skipped = Some(note);
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
    row.stages = stages(&console, run.secs);
    row.failures = expectation_failures(expect, &row, &console, check.as_ref(), run.exit, in_vm);
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
        let stage = if name.starts_with("backend:") { "backends" } else { name.as_str() };
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
/// lab never reported.
fn lab_outcomes(console: &Console, expect: &Expect) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = console
        .json("lab")
        .iter()
        .filter(|v| v["type"] == "lab-result")
        .filter_map(|result| {
            let name = result["scenario"].as_str()?.to_string();
            let diagnosed = result["diagnosed"].as_bool().unwrap_or(false);
            let skipped = result["skipped"].as_bool().unwrap_or(false);
            let detail = if diagnosed {
                format!("diagnosed as {}", result["expected_rule"].as_str().unwrap_or("?"))
            } else {
                let problems: Vec<&str> =
                    result["problems"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                problems.join("; ")
            };
            let verdict = match (diagnosed, skipped) {
                (true, _) => Verdict::Diagnosed,
                (false, true) => Verdict::Skipped,
                (false, false) => Verdict::NotDiagnosed,
            };
            Some(Outcome { expected: expect.scenarios.contains(&name), name, verdict, detail })
        })
        .collect();
    for name in &expect.scenarios {
        if !outcomes.iter().any(|o| &o.name == name) {
            let why = console.error_line("lab").unwrap_or_else(|| "the lab did not run".into());
            let detail = format!("no result (lab exit {}): {why}", exit_text(console.rc("lab")));
            outcomes.push(Outcome { name: name.clone(), verdict: Verdict::NotRun, expected: true, detail });
        }
    }
    outcomes
}

/// Judges the forced run `backend:FAMILY=NAME`.
fn backend_outcome(spec: &str, console: &Console, check: Option<&Value>, expect: &Expect) -> Outcome {
    let (verdict, detail) = backend_verdict(spec, console, check);
    Outcome { name: spec.to_string(), verdict, expected: expect.backend(spec), detail }
}

fn backend_verdict(spec: &str, console: &Console, check: Option<&Value>) -> (Verdict, String) {
    let section = format!("backend:{spec}");
    let rc = console.rc(&section);
    let stderr = console.lines(&format!("{section}.stderr"));
    if rc == Some(2) && stderr.iter().any(|l| rejects_backend(l)) {
        return (Verdict::NotInDptrace, format!("this dptrace does not accept --backend {spec}"));
    }
    let (family, backend) = spec.split_once('=').unwrap_or(("drops", spec));
    let seen = match family {
        "netfilter" => netfilter_told_apart(&console.json(&section), backend),
        "links" => link_failure_explained(&console.json(&section)),
        _ => test_drops_seen(&console.json(&section)),
    };
    let why = match seen {
        Ok(seen) => return (Verdict::Worked, seen),
        Err(why) => why,
    };
    if let Some(reason) = check.and_then(|c| unavailable_in_check(c, family, backend)) {
        return (Verdict::Unsupported, reason);
    }
    let error = console.error_line(&section).filter(|l| l.contains("error"));
    (Verdict::Failed, error.unwrap_or_else(|| format!("{why} (exit {})", exit_text(rc))))
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

/// Did the trace report the drops of matrix.sh's test packets? Each must be a drop event of
/// its flow with reason NO_SOCKET, or with no reason when the backend cannot read one
/// (`coverage.reason` false in the summary). Without packet headers (no BTF) drops carry no
/// flow; then enough flowless NO_SOCKET drops count.
fn test_drops_seen(output: &[Value]) -> Result<String, String> {
    let drops: Vec<&Value> = output.iter().filter(|v| v["type"] == "event" && v["kind"] == "drop").collect();
    let reasonless = output
        .iter()
        .filter(|v| v["type"] == "summary")
        .flat_map(|s| s["hooks"].as_array().into_iter().flatten())
        .any(|h| h["coverage"]["reason"] == false);
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for dst in TEST_DSTS {
        let ours = drops.iter().find(|e| e["flow"]["dst"] == dst && e["flow"]["dport"] == TEST_PORT);
        match ours {
            Some(e) if e["reason"] == "NO_SOCKET" => seen.push(format!("{dst} NO_SOCKET{}", on_device(e))),
            Some(e) if e["reason"].is_null() && reasonless => {
                let function = e["function"].as_str().unwrap_or("?");
                seen.push(format!("{dst} at {function}{} (no reason field)", on_device(e)))
            }
            Some(e) => missing.push(format!("{dst} dropped with reason {}", e["reason"])),
            None => missing.push(format!("no drop to {dst}:{TEST_PORT}")),
        }
    }
    if missing.is_empty() {
        return Ok(seen.join(", "));
    }
    let flowless = drops.iter().filter(|e| e["flow"].is_null() && e["reason"] == "NO_SOCKET").count();
    if flowless >= TEST_DSTS.len() {
        return Ok(format!("{flowless} NO_SOCKET drops without packet headers"));
    }
    Err(format!("{} ({} drop events)", missing.join("; "), drops.len()))
}

/// Did the trace explain matrix.sh's failed creation of a `bogus` link? A
/// `link-kind-unsupported` finding whose evidence holds the request and its EOPNOTSUPP, and
/// the kernel's message where the kernel has extended acks.
fn link_failure_explained(output: &[Value]) -> Result<String, String> {
    let finding = output
        .iter()
        .find(|v| v["type"] == "finding" && v["rule"] == "link-kind-unsupported")
        .ok_or("no link-kind-unsupported finding for the bogus link")?;
    let evidence = finding["evidence"].as_array().map(Vec::as_slice).unwrap_or_default();
    let has = |kind: &str, field: &str, value: &str| evidence.iter().any(|e| e["kind"] == kind && e[field] == value);
    if !has("link-request", "link_kind", "bogus") || !has("netlink-ack", "error", "EOPNOTSUPP") {
        return Err(format!("link-kind-unsupported without the bogus request and its EOPNOTSUPP: {finding}"));
    }
    let message = evidence.iter().find(|e| e["kind"] == "kernel-message").and_then(|e| e["message"].as_str());
    Ok(format!("request, EOPNOTSUPP{}", message.map(|m| format!(", kernel: {m}")).unwrap_or_default()))
}

/// Did the trace tell matrix.sh's netfilter faults apart? Native nftables rules without
/// counters: a DROP of udp/9998 must be a `netfilter-drop` and a REJECT (tcp reset) of
/// tcp/6443 a `reject-by-rule`. With `verdicts`, the kernel's verdict must also name the
/// table and chain (no counter can).
fn netfilter_told_apart(output: &[Value], backend: &str) -> Result<String, String> {
    let findings: Vec<&Value> = output.iter().filter(|v| v["type"] == "finding").collect();
    let for_port = |rule: &str, port: &str| {
        findings.iter().copied().find(|f| {
            f["rule"] == rule
                && f["flows"].as_array().into_iter().flatten().any(|fl| fl.as_str().is_some_and(|s| s.ends_with(port)))
        })
    };
    let mut missing = Vec::new();
    let mut seen = Vec::new();
    // udp/9997: an iptables-legacy DROP, where the guest has iptables-legacy (its counter
    // attributes it with either backend; with kprobes ipt_do_table may name it first).
    let legacy = for_port("netfilter-drop", ":9997");
    if let Some(f) = legacy {
        let nf = &f["netfilter"];
        if nf["table"] == "filter" {
            seen.push(format!("netfilter-drop :9997 in filter {}", nf["source"].as_str().unwrap_or("?")));
        } else {
            missing.push(format!("netfilter-drop :9997 without its table (netfilter: {nf})"));
        }
    }
    for (rule, port) in [("netfilter-drop", ":9998"), ("reject-by-rule", ":6443")] {
        match for_port(rule, port) {
            None => missing.push(format!("no {rule} for {port}")),
            Some(f) if backend == "verdicts" => {
                let nf = &f["netfilter"];
                if nf["table"] == "mxguard" && nf["chain"] == "input" {
                    seen.push(format!(
                        "{rule} {port} in {} {}",
                        nf["table"].as_str().unwrap_or("?"),
                        nf["source"].as_str().unwrap_or("?")
                    ));
                } else {
                    missing.push(format!("{rule} {port} without the kernel's verdict (netfilter: {nf})"));
                }
            }
            Some(_) => seen.push(format!("{rule} {port}")),
        }
    }
    if missing.is_empty() {
        Ok(seen.join(", "))
    } else {
        Err(missing.join("; "))
    }
}

fn on_device(event: &Value) -> String {
    event["device"].as_str().map(|d| format!(" on {d}")).unwrap_or_default()
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
    for outcome in row.scenarios.iter().chain(&row.backends).filter(|o| o.expected && !o.verdict.is_good()) {
        failures.push(format!("{}: {}: {}", outcome.name, outcome.verdict.label(), outcome.detail));
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
        let families: Vec<String> = self.rows.iter().flat_map(|r| r.hooks.keys().cloned()).fold(Vec::new(), uniq);
        let mut header = vec!["kernel".to_string(), "release".into(), "BTF".into()];
        header.extend(families.iter().map(|f| format!("{f} hook (check)")));
        header.extend(backends.iter().map(|b| format!("forced {b}")));
        header.extend(scenarios.iter().map(|s| format!("lab {s}")));
        header.extend(["features missing".into(), "check problems".into(), "time".into(), "result".into()]);

        let mut md = format!("# dptrace kernel-compatibility matrix\n\n{}, `cargo xtask vm-test`\n\n", self.dptrace);
        md.push_str(&table_line(&header));
        md.push_str(&table_line(&vec!["---".to_string(); header.len()]));
        for row in &self.rows {
            md.push_str(&table_line(&self.cells(row, &families, &backends, &scenarios)));
        }
        md.push_str(
            "\nyes: the forced run saw the test drops (UDP to a closed port, IPv4 and IPv6) / the scenario was \
             diagnosed; no: it did not; unsupported: `dptrace check` says this kernel cannot attach that \
             backend; n/a: this dptrace has no such backend; skipped: the lab cannot reproduce the scenario on this kernel; **bold**: the matrix expects it, so vm-test fails.\n",
        );
        md.push_str(&self.kernels());
        md.push_str(&self.notes());
        let over = if self.total_secs > BUDGET_SECS { " — OVER the 15 min budget" } else { "" };
        md.push_str(&format!("\nTotal: {:.0} s{over}.\n", self.total_secs));
        md
    }

    /// Names of a per-row outcome list, in order of first appearance.
    fn columns(&self, pick: impl Fn(&Row) -> &Vec<Outcome>) -> Vec<String> {
        self.rows.iter().flat_map(|r| pick(r).iter().map(|o| o.name.clone())).fold(Vec::new(), uniq)
    }

    fn cells(&self, row: &Row, families: &[String], backends: &[String], scenarios: &[String]) -> Vec<String> {
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
        let missing: Vec<&str> = row.features.iter().filter(|(_, f)| !f.present).map(|(n, _)| n.as_str()).collect();
        let problems: Vec<&str> = row.problems.iter().map(|p| p.feature.as_str()).collect();
        let skipped = row.status == Status::Skipped;
        cells.push(if skipped { dash() } else { or_none(missing.join(", ")) });
        cells.push(if skipped { dash() } else { or_none(problems.join(", ")) });
        cells.push(if skipped { dash() } else { format!("{:.0} s", row.secs) });
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
            if row.status != Status::Skipped {
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
        Verdict::Worked | Verdict::Diagnosed => return "yes".into(),
        Verdict::Failed | Verdict::NotDiagnosed | Verdict::NotRun => "no",
        Verdict::Unsupported => "unsupported",
        Verdict::NotInDptrace => "n/a",
        Verdict::Skipped => "skipped",
    };
    if outcome.expected {
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
        assert!(nowg.boot_args(Path::new("/w")).windows(2).any(|w| w == ["--exclude-module", "wireguard"]));
        assert!(matrix.select(Path::new("/w"), &["nope".into()]).unwrap_err().to_string().contains("6.1-amd64"));
    }

    #[test]
    fn bad_matrices_are_refused() {
        let base = "[defaults]\ntry_backends = []\ntimeout_secs = 1\n[host]\n";
        let both = format!("{base}[[kernel]]\nname = \"a\"\ndescription = \"\"\npackage = \"p\"\ndir = \"d\"\n");
        assert!(Matrix::parse(&both).unwrap_err().to_string().contains("exactly one"));
        let optional =
            format!("{base}[[kernel]]\nname = \"a\"\ndescription = \"\"\npackage = \"p\"\noptional = true\n");
        assert!(Matrix::parse(&optional).is_err());
        let typo =
            format!("{base}[[kernel]]\nname = \"a\"\ndescription = \"\"\npackage = \"p\"\nexclude_module = []\n");
        assert!(Matrix::parse(&typo).is_err());
    }

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
DPTRACE-MATRIX-BEGIN backend:drops=tracepoint
{"type":"event","kind":"drop","reason":"NO_SOCKET","flow":{"dst":"10.77.0.2","dport":9999}}
{"type":"event","kind":"drop","reason":"NO_SOCKET","flow":{"dst":"fd00:77::2","dport":9999}}
DPTRACE-MATRIX-END backend:drops=tracepoint rc=0
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

    fn expect() -> Expect {
        let mut expect = Expect { btf: Some(true), ..Expect::default() };
        expect.scenarios = vec!["udp-closed-port".into(), "node-icmp-blocked".into()];
        expect.backends.insert("drops".into(), vec!["tracepoint".into(), "fentry".into()]);
        expect.features.insert("wireguard".into(), false);
        expect
    }

    fn run() -> RunOutput {
        RunOutput {
            console: CONSOLE.into(),
            exit: Some(0),
            kernel: "pkg".into(),
            accel: Some("tcg".into()),
            secs: 20.0,
            log: "x.log".into(),
        }
    }

    #[test]
    fn console_sections_skip_kernel_messages() {
        let console = Console::parse(CONSOLE);
        assert!(console.done);
        assert_eq!(console.rc("check"), Some(1));
        assert_eq!(console.json("check").len(), 1);
        assert_eq!(console.lines("check").len(), 1);
        assert_eq!(console.modules_excluded, ["wireguard"]);
        assert!(is_kernel_message("[    1.000000] x") && !is_kernel_message("[x] y") && !is_kernel_message("{}"));
    }

    #[test]
    fn judging_follows_the_expectations() {
        let row = judge("k", "d", &expect(), run(), true);
        let verdict = |list: &[Outcome], name: &str| list.iter().find(|o| o.name == name).unwrap().verdict;
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
        assert!(md.contains("| k | 6.1.0-56-amd64 | yes | tracepoint | yes | unsupported | **n/a** |"));
    }

    #[test]
    fn drops_without_reason_or_flow_count_when_the_backend_cannot_see_them() {
        let summary = serde_json::json!({"type":"summary","hooks":[{"coverage":{"reason":false}}]});
        let ev = |dst: &str| serde_json::json!({"type":"event","kind":"drop","reason":null,"function":"f","flow":{"dst":dst,"dport":9999}});
        assert!(test_drops_seen(&[ev("10.77.0.2"), ev("fd00:77::2"), summary]).is_ok());
        assert!(test_drops_seen(&[ev("10.77.0.2"), ev("fd00:77::2")]).is_err());
        let flowless = serde_json::json!({"type":"event","kind":"drop","reason":"NO_SOCKET"});
        assert!(test_drops_seen(&[flowless.clone(), flowless]).is_ok());
    }
}

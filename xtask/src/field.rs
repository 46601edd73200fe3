//! The field suite's table: which real component (Debian package and version) went through
//! which scenario on which kernel, and what dptrace said. The tests write the rows
//! (tests/src/field.rs on the host, vm-images/guests/field.sh in the VM guests); this module
//! only gathers them into `target/field/table.md` and, with `cargo xtask field-table
//! --readme`, into README.md between its markers. Nothing in the table is written by hand.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde_json::Value;

const README_BEGIN: &str = "<!-- field-table:begin (cargo xtask field-table --readme) -->";
const README_END: &str = "<!-- field-table:end -->";

fn dir(root: &Path) -> PathBuf {
    root.join("target/field")
}

/// Keeps this run's host rows (`field_log`, JSON lines from the e2e tests) as the host's
/// results, replacing the previous run's, and rewrites the table. A run of only some files
/// (`--test`) keeps the rows of the other files from before.
pub fn write_host_results(root: &Path, field_log: &Path) -> anyhow::Result<()> {
    let new = read_rows(field_log)?;
    let _ = fs::remove_file(field_log);
    let stored = dir(root).join("host.jsonl");
    let tests: Vec<&str> = new.iter().filter_map(|r| r["test"].as_str()).collect();
    let mut rows: Vec<Value> =
        read_rows(&stored)?.into_iter().filter(|r| !tests.contains(&r["test"].as_str().unwrap_or_default())).collect();
    rows.extend(new);
    write_rows(&stored, &rows)?;
    write_table(root)
}

/// Replaces the VM guests' rows (gathered by vm-test from each kernel's guest) and rewrites
/// the table. Rows of kernels not in `kernels` (a `--kernel` run) are kept.
pub fn write_vm_results(root: &Path, kernels: &[String], new: Vec<Value>) -> anyhow::Result<()> {
    let stored = dir(root).join("vm.jsonl");
    let mut rows: Vec<Value> = read_rows(&stored)?
        .into_iter()
        .filter(|r| !kernels.iter().any(|k| r["matrix_row"].as_str() == Some(k)))
        .collect();
    rows.extend(new);
    write_rows(&stored, &rows)?;
    write_table(root)
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("a field row that is not JSON: {l}")))
        .collect()
}

fn write_rows(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The markdown table of all rows: one line per component, version, scenario and result, the
/// kernels it held on joined.
pub fn table(root: &Path) -> anyhow::Result<String> {
    let mut rows = read_rows(&dir(root).join("host.jsonl"))?;
    rows.extend(read_rows(&dir(root).join("vm.jsonl"))?);
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("?").to_string();
    let mut grouped: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
    for r in &rows {
        let kernel = match r["matrix_row"].as_str() {
            Some(row) => format!("{} (VM {row})", s(r, "kernel")),
            None => format!("{} (host)", s(r, "kernel")),
        };
        let kernels =
            grouped.entry((s(r, "component"), s(r, "version"), s(r, "scenario"), s(r, "result"))).or_default();
        if !kernels.contains(&kernel) {
            kernels.push(kernel);
        }
    }
    let mut out = String::from("| component | version | scenario | kernels | dptrace said |\n|---|---|---|---|---|\n");
    for ((component, version, scenario, result), kernels) in grouped {
        out += &format!("| {component} | {version} | {scenario} | {} | {result} |\n", kernels.join(", "));
    }
    Ok(out)
}

fn write_table(root: &Path) -> anyhow::Result<()> {
    let table = table(root)?;
    fs::write(dir(root).join("table.md"), &table).context("cannot write target/field/table.md")
}

/// `cargo xtask field-table [--readme]`: prints the table; with `--readme`, puts it into
/// README.md between the markers.
pub fn command(root: &Path, readme: bool) -> anyhow::Result<()> {
    let table = table(root)?;
    if table.lines().count() <= 2 {
        bail!("no field results yet: run `cargo xtask test` (or `cargo xtask e2e` and `cargo xtask vm-test`) first");
    }
    print!("{table}");
    if readme {
        let path = root.join("README.md");
        let text = fs::read_to_string(&path)?;
        let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
            bail!("README.md has no field-table markers ({README_BEGIN} … {README_END})");
        };
        let new = format!("{}{README_BEGIN}\n{table}{}", &text[..begin], &text[end..]);
        fs::write(&path, new)?;
        eprintln!("README.md: field table updated");
    }
    Ok(())
}

//! The man page and shell completions that `dptrace generate` prints (and `cargo xtask dist`
//! installs into target/dist): the page renders without formatter warnings and documents every
//! command; bash completes subcommands and options; the hidden subcommand stays hidden.

use std::{path::PathBuf, process::Command};

use dptrace_e2e::{dptrace, stderr};

fn generate(kind: &str) -> String {
    let out = dptrace(&["generate", kind]);
    assert!(out.status.success(), "dptrace generate {kind}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("generate {kind}: not UTF-8: {e}"))
}

/// `text` in a file of its own (removed on drop).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dptrace-e2e-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn man_page_renders_and_documents_every_command() {
    let page = generate("man");
    // Structure (whatever formatter is installed): the title, then the sections man(7) expects.
    let lines: Vec<&str> = page.lines().filter(|l| !l.starts_with(".ie ") && !l.starts_with(".el ")).collect();
    assert!(lines[0].starts_with(".TH DPTRACE 1 "), "first line: {}", lines[0]);
    for heading in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH COMMANDS", ".SH \"EXIT STATUS\""] {
        assert!(lines.contains(&heading), "no {heading}");
    }
    for command in ["check", "trace", "lab list", "lab run"] {
        assert!(lines.contains(&format!(".SS \"dptrace {command}\"").as_str()), "no subsection for {command}");
    }
    assert!(!page.contains("generate"), "the hidden subcommand is documented");

    let file = TempFile::new("dptrace.1", &page);
    let rendered = if have("groff") {
        // -ww: every warning; -z: no output, so stderr holds only the warnings.
        let check = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&file.0).output().unwrap();
        assert!(check.status.success() && check.stderr.is_empty(), "groff warns: {}", stderr(&check));
        let out = Command::new("groff").args(["-man", "-Tutf8", "-P-cbou"]).arg(&file.0).output().unwrap();
        assert!(out.status.success(), "groff: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else if have("man") {
        let out =
            Command::new("man").arg("-l").arg(&file.0).env("MANWIDTH", "100").env("MANPAGER", "cat").output().unwrap();
        assert!(out.status.success(), "man -l: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        dptrace_e2e::skip!(
            "missing-tool:groff",
            "neither groff nor man here: checked the roff structure only, not its rendering"
        );
    };
    for text in ["DPTRACE(1)", "EXIT STATUS", "dptrace trace", "--filter <EXPR>", "--backend <FAMILY=BACKEND>", "ARGS…"]
    {
        assert!(rendered.contains(text), "the rendered page lacks `{text}`:\n{rendered}");
    }
    assert!(!rendered.contains("\\["), "an escape was not interpreted:\n{rendered}");
}

/// What bash's completion function offers for the words typed so far (the last one being
/// completed). Bash calls it as `_dptrace COMMAND WORD PREVIOUS-WORD` with `COMP_WORDS` and
/// `COMP_CWORD` set; clap's script reads the word from `$2` (bash 4+).
fn bash_complete(script: &TempFile, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
         _dptrace \"${{COMP_WORDS[0]}}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.0.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &program]).output().expect("run bash");
    assert!(out.status.success(), "bash: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[test]
fn bash_completes_subcommands_and_options() {
    if !have("bash") {
        dptrace_e2e::skip!("missing-tool:bash", "no bash here");
    }
    let script = TempFile::new("dptrace.bash", &generate("complete-bash"));
    assert_eq!(bash_complete(&script, &["dptrace", "tr"]), ["trace"]);
    assert_eq!(bash_complete(&script, &["dptrace", "lab", "r"]), ["run"]);
    assert_eq!(bash_complete(&script, &["dptrace", "trace", "--fil"]), ["--filter"]);
    let all = bash_complete(&script, &["dptrace", ""]);
    for command in ["check", "trace", "lab"] {
        assert!(all.iter().any(|w| w == command), "`dptrace <TAB>` lacks {command}: {all:?}");
    }
    assert!(!all.iter().any(|w| w == "generate"), "`dptrace <TAB>` offers the hidden subcommand: {all:?}");
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    for (kind, shell) in [("complete-zsh", "zsh"), ("complete-fish", "fish")] {
        let script = generate(kind);
        for word in ["check", "trace", "lab", "run", "filter", "backend"] {
            assert!(script.contains(word), "{kind} lacks {word}");
        }
        assert!(!script.contains("generate"), "{kind} completes the hidden subcommand");
        if have(shell) {
            // Syntax only: both shells parse without running with -n.
            let file = TempFile::new(kind, &script);
            let out = Command::new(shell).arg("-n").arg(&file.0).output().unwrap();
            assert!(out.status.success(), "{shell} -n: {}", stderr(&out));
        }
    }
}

#[test]
fn help_does_not_show_the_generate_subcommand() {
    let out = dptrace(&["--help"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("generate"));
    let out = dptrace(&["generate", "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

//! `dptrace generate KIND` (hidden): the man page and shell completions, generated from the
//! clap definitions in `cli.rs` so they never drift from the real command line.
//! `cargo xtask dist` writes them to `target/dist/`.
//!
//! The man page is one page, `dptrace(1)`, with every subcommand and its options in a
//! COMMANDS section: dptrace has few subcommands, and `man dptrace` then `/--filter` should
//! find everything (as `man ip` users expect), not send readers on to `dptrace-trace(1)`.

use std::io::{self, Write};

use clap::{Command, CommandFactory, ValueEnum};
use clap_complete::Shell;
use clap_mangen::{
    roff::{bold, italic, roman, Roff},
    Man,
};

use crate::cli::Cli;

/// What `dptrace generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateKind {
    /// The man page (roff), for `man -l` or `/usr/share/man/man1/dptrace.1`.
    Man,
    /// bash completion, for `/usr/share/bash-completion/completions/dptrace`.
    CompleteBash,
    /// zsh completion, for a `_dptrace` file on `$fpath`.
    CompleteZsh,
    /// fish completion, for `~/.config/fish/completions/dptrace.fish`.
    CompleteFish,
}

/// Writes `kind` to `out` (rendered in memory first: a closed pipe is an error, not a panic).
pub fn generate(kind: GenerateKind, out: &mut dyn Write) -> io::Result<()> {
    let bytes = match kind {
        GenerateKind::Man => man_page(),
        GenerateKind::CompleteBash => completion(Shell::Bash),
        GenerateKind::CompleteZsh => completion(Shell::Zsh),
        GenerateKind::CompleteFish => completion(Shell::Fish),
    };
    out.write_all(&bytes)?;
    out.flush()
}

/// The command line as users see it: without hidden subcommands (`generate`) and without
/// clap's `help` subcommand, built (so every subcommand knows its `dptrace …` name).
fn visible_command() -> Command {
    let full = Cli::command();
    let mut cmd = Command::new("dptrace");
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        cmd = cmd.long_about(about.clone());
    }
    cmd = cmd
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .disable_help_subcommand(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    cmd.build();
    cmd
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), "dptrace", &mut out);
    out
}

/// Subcommands without subcommands of their own, in display order (`check`, `trace`,
/// `lab list`, `lab run`).
fn leaves(cmd: &Command) -> Vec<Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.has_subcommands() {
            out.extend(leaves(sub));
        } else {
            // -h/--help and -V/--version are described once, under OPTIONS.
            out.push(sub.clone().mut_arg("help", |a| a.hide(true)).mut_arg("version", |a| a.hide(true)));
        }
    }
    out
}

/// One section rendered by clap_mangen, without roff's apostrophe preamble and without the
/// section's own `.SH` line (the page puts it under its own heading).
fn section_body(render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("rendering into a Vec does not fail");
    let text = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    let mut lines = text.lines().skip_while(|l| l.starts_with(".ie \\n(.g .ds Aq") || l.starts_with(".el .ds Aq"));
    let heading = lines.next().unwrap_or_default();
    debug_assert!(heading.starts_with(".SH"), "a section starts with .SH: {heading:?}");
    lines.map(|l| format!("{l}\n")).collect()
}

/// The roff source of `dptrace(1)`.
pub fn man_page() -> Vec<u8> {
    let cmd = visible_command();
    let top = Man::new(cmd.clone()).title("DPTRACE").manual("dptrace manual");
    let leaves = leaves(&cmd);
    let mut page = String::new();
    top.render_title(&mut WriteString(&mut page)).expect("a String accepts everything");
    page += &section_heading("NAME");
    page += &section_body(|w| top.render_name_section(w));

    page += &section_heading("SYNOPSIS");
    for (i, leaf) in leaves.iter().enumerate() {
        if i > 0 {
            page += ".br\n";
        }
        page += &section_body(|w| Man::new(leaf.clone()).render_synopsis_section(w));
    }

    page += &section_heading("DESCRIPTION");
    page += &section_body(|w| top.render_description_section(w));
    page += &roff(|r| {
        r.control("PP", []).text([roman(
            "dptrace attaches eBPF programs to the tracepoints (and, where the kernel allows, kprobes \
             and fentry) of the network datapath, decodes what they report, correlates it and applies \
             diagnosis rules. Each finding names a stable rule id, a severity, a one-line summary, the \
             evidence events and a remediation. Nothing is ever dropped, redirected or modified: \
             programs attach through bpf_link, so the kernel detaches them when dptrace exits, however \
             it exits.",
        )]);
    });

    page += &section_heading("OPTIONS");
    page += &roff(|r| {
        r.text([roman("Every command takes these; the options of each command are under COMMANDS.")]);
    });
    page += &section_body(|w| top.render_options_section(w));

    page += &section_heading("COMMANDS");
    for leaf in &leaves {
        let man = Man::new(leaf.clone());
        let name = leaf.get_bin_name().unwrap_or_else(|| leaf.get_name()).to_string();
        page += &roff(|r| {
            r.control("SS", [name.as_str()]);
        });
        page += &section_body(|w| man.render_synopsis_section(w));
        page += ".PP\n";
        page += &section_body(|w| man.render_description_section(w));
        if leaf.get_arguments().any(|a| !a.is_hide_set()) {
            page += &section_body(|w| man.render_options_section(w));
        }
    }

    page += &section_heading("OUTPUT");
    page += &roff(|r| {
        r.text([roman(
            "Human-readable events, findings and a summary go to standard output; diagnostics and \
             logs go to standard error. With ",
        )])
        .text([bold("--json"), roman(", standard output carries JSON Lines: objects whose ")])
        .text([bold("type"), roman(" is "), bold("event"), roman(", "), bold("finding"), roman(" or ")])
        .text([bold("summary"), roman(". A finding has at least "), bold("rule"), roman(", ")])
        .text([
            bold("severity"),
            roman(" (error, warning or info), "),
            bold("summary"),
            roman(", "),
            bold("evidence"),
            roman(" (an array of events) and "),
            bold("remediation"),
            roman("."),
        ]);
    });

    page += &section_heading("EXIT STATUS");
    page += &roff(|r| {
        for (code, meaning) in [
            ("0", "Success."),
            ("1", "dptrace check found a problem (a hook family cannot attach), or a lab scenario was not diagnosed as expected."),
            ("2", "dptrace itself failed: bad arguments, not root, or the eBPF programs could not be loaded."),
        ] {
            r.control("TP", []).text([bold(code)]).text([roman(meaning)]);
        }
    });

    page += &section_heading("ENVIRONMENT");
    page += &roff(|r| {
        for (name, meaning) in [
            ("RUST_LOG", "Log level of the diagnostics on standard error (default warn; info for more)."),
            (
                "DPTRACE_BTF",
                "none: behave as on a kernel without BTF; a path: read the kernel's types from that BTF file instead of /sys/kernel/btf/vmlinux.",
            ),
            ("DPTRACE_TRACEFS", "Use this tracefs directory instead of /sys/kernel/tracing (testing only)."),
        ] {
            r.control("TP", []).text([bold(name)]).text([roman(meaning)]);
        }
    });

    page += &section_heading("EXAMPLES");
    page += &roff(|r| {
        for (what, example) in [
            ("What this kernel supports:", "dptrace check"),
            (
                "Trace while a command runs, then report (here: UDP to a port nothing listens on):",
                "dptrace trace --netns demo-b -- ip netns exec demo-a bash -c 'echo hello > /dev/udp/10.9.0.2/53'",
            ),
            (
                "Follow ICMP packets to one pod hop by hop, for ten seconds:",
                "dptrace trace --path --filter 'icmp and host 10.244.2.2' --duration 10s",
            ),
            ("Reproduce every known failure in throwaway namespaces and diagnose it:", "dptrace lab run --all"),
        ] {
            r.control("PP", []).text([roman(what)]);
            r.control("RS", ["4"]).control("nf", []).text([roman(example)]).control("fi", []).control("RE", []);
        }
    });

    page += &section_heading("VERSION");
    page += &section_body(|w| top.render_version_section(w));
    page += &section_heading("SEE ALSO");
    page += &roff(|r| {
        r.text([
            bold("pcap-filter"),
            roman("(7), "),
            bold("ip-netns"),
            roman("(8), "),
            bold("nft"),
            roman("(8), "),
            bold("iptables"),
            roman("(8), "),
            bold("bpftool"),
            roman("(8), "),
            italic("/sys/kernel/tracing/events"),
        ]);
    });
    ascii_roff(&page).into_bytes()
}

/// Non-ASCII characters (the help texts' `…` and `→`) as roff's `\[uXXXX]` escapes: groff
/// without a preprocessor and other formatters read only ASCII reliably.
fn ascii_roff(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out += &format!("\\[u{:04X}]", u32::from(c));
        }
    }
    out
}

fn section_heading(name: &str) -> String {
    roff(|r| {
        r.control("SH", [name]);
    })
}

/// Roff lines built with the roff crate (escaped), without the apostrophe preamble: the
/// page starts with it once (from the title).
fn roff(build: impl FnOnce(&mut Roff)) -> String {
    let mut r = Roff::new();
    build(&mut r);
    r.to_roff()
}

/// `io::Write` into a `String` (clap_mangen writes valid UTF-8).
struct WriteString<'a>(&'a mut String);

impl Write for WriteString<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push_str(std::str::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: GenerateKind) -> String {
        let mut out = Vec::new();
        generate(kind, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn man_page_has_every_command_and_option_once() {
        let page = text(GenerateKind::Man);
        assert!(page.starts_with(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH DPTRACE 1 "), "{}", &page[..80]);
        let headings: Vec<&str> = page.lines().filter(|l| l.starts_with(".SH ")).collect();
        assert_eq!(
            headings,
            [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                ".SH OPTIONS",
                ".SH COMMANDS",
                ".SH OUTPUT",
                ".SH \"EXIT STATUS\"",
                ".SH ENVIRONMENT",
                ".SH EXAMPLES",
                ".SH VERSION",
                ".SH \"SEE ALSO\"",
            ]
        );
        // One subsection per command that runs something, in the order of `--help`.
        let subsections: Vec<&str> = page.lines().filter(|l| l.starts_with(".SS ")).collect();
        let expected: Vec<String> =
            leaves(&visible_command()).iter().map(|c| format!(".SS \"{}\"", c.get_bin_name().unwrap())).collect();
        assert_eq!(subsections, expected);
        for command in ["check", "trace", "lab list", "lab run"] {
            assert!(subsections.contains(&format!(".SS \"dptrace {command}\"").as_str()), "no {command}");
        }
        // Every long option of `trace` is documented (clap_mangen escapes '-' as '\-').
        let trace = Cli::command().find_subcommand("trace").unwrap().clone();
        for arg in trace.get_arguments() {
            if let Some(long) = arg.get_long() {
                let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&escaped), "--{long} missing from the man page");
            }
        }
        assert!(!page.contains("generate"), "the hidden subcommand leaked into the man page");
        assert!(!page.contains(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.SH"), "a second preamble");
        assert!(page.is_ascii());
        assert!(page.contains("ARGS\\[u2026]"), "`…` becomes \\[u2026]");
        // -h and -V once, at the top.
        assert_eq!(page.matches("Print help").count(), 1);
    }

    #[test]
    fn completions_name_the_subcommands_but_not_the_hidden_one() {
        for kind in [GenerateKind::CompleteBash, GenerateKind::CompleteZsh, GenerateKind::CompleteFish] {
            let script = text(kind);
            for word in ["check", "trace", "lab", "duration", "filter", "backend"] {
                assert!(script.contains(word), "{kind:?}: no {word}");
            }
            assert!(!script.contains("generate"), "{kind:?} completes the hidden subcommand");
        }
        assert!(text(GenerateKind::CompleteBash).contains("_dptrace()"));
        assert!(text(GenerateKind::CompleteZsh).starts_with("#compdef dptrace"));
    }
}

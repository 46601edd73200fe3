//! Errors as the user sees them: one line on stderr that says what is wrong and where to look
//! (DESIGN.md: exit status 2 when the tool itself fails). Scripts and operators read the last
//! line of stderr; clap's multi-line usage blocks and multi-line kernel messages would bury it.

use clap::{error::ErrorKind, CommandFactory};

/// A clap usage error on one line, e.g. `dptrace: error: unexpected argument '--bogus' found
/// (tip: …); see `dptrace trace --help``. `args` are the arguments without the program name:
/// the subcommand they reach names the help to read.
pub fn usage_error_line(e: &clap::Error, args: impl IntoIterator<Item = String>) -> String {
    let root = crate::cli::Cli::command();
    let mut path = vec![root.get_name().to_string()];
    let mut command = &root;
    for arg in args {
        match command.find_subcommand(&arg) {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                command = sub;
            }
            None => break,
        }
    }
    let path = path.join(" ");
    let what = match e.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let subcommands: Vec<&str> = command
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(|s| s.get_name())
                .collect();
            format!("`{path}` needs a subcommand: {}", subcommands.join(", "))
        }
        _ => clap_message(&e.render().to_string()),
    };
    format!("dptrace: error: {what}; see `{path} --help`")
}

/// clap's rendered error without its `error:` prefix, usage block and help pointer.
fn clap_message(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") {
            break;
        }
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        match line.strip_prefix("tip:") {
            Some(tip) => parts.push(format!("(tip:{tip})")),
            None => parts.push(line.strip_prefix("error:").unwrap_or(line).trim().to_string()),
        }
    }
    one_line(&parts.join(" "))
}

/// `text` on one line: line breaks (of a kernel or verifier message, say) become `; `.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(args: &[&str]) -> String {
        let e = crate::cli::Cli::try_parse_from(std::iter::once("dptrace").chain(args.iter().copied())).unwrap_err();
        usage_error_line(&e, args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn usage_errors_are_one_line_and_point_at_the_help() {
        let bogus = line(&["trace", "--bogus"]);
        assert!(bogus.starts_with("dptrace: error: unexpected argument '--bogus' found (tip: "), "{bogus}");
        assert!(bogus.ends_with("; see `dptrace trace --help`"), "{bogus}");
        let missing = line(&["trace", "--filter", "tcp"]);
        assert!(missing.contains("required arguments were not provided: --path"), "{missing}");
        let none = line(&[]);
        assert!(none.starts_with("dptrace: error: `dptrace` needs a subcommand: check, trace, "), "{none}");
        assert!(none.contains("lab") && !none.contains("generate"), "hidden ones are not offered: {none}");
        assert!(none.ends_with("; see `dptrace --help`"), "{none}");
        let lab = line(&["lab"]);
        assert!(lab.contains("`dptrace lab` needs a subcommand: list, run"), "{lab}");
        for args in [&["trace", "--duration", "soon"][..], &["lab", "run", "--bogus"], &["check", "x"], &[]] {
            let text = line(args);
            assert!(!text.contains('\n') && !text.contains("Usage:"), "{args:?}: {text}");
        }
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n\n  b  \nc"), "a; b; c");
        assert_eq!(one_line("single"), "single");
    }
}

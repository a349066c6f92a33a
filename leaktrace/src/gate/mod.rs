//! Stage: **gate** (after report). In: the final report with its scan. Out: the exit code a
//! test suite acts on.
//!
//! As valgrind's `--error-exitcode`: leaktrace exits with the given code when the scan found
//! bytes of the chosen leak kinds (`--errors-for-leak-kinds`, by default definitely and
//! possibly lost, as valgrind's default), at sites no suppression names. Suppressions are
//! LeakSanitizer's format, one `leak:PATTERN` a line: a site is suppressed when PATTERN
//! matches the function, file or module of any frame of its stack (a substring, `*` for any
//! run of characters, `^` and `$` to anchor it).

use std::{fs, path::Path};

use anyhow::{Result, bail};

use crate::{
    error::Failure,
    report::{Report, SiteReport},
    scan::{Amount, KindAmounts},
};

/// A leak kind, as `--errors-for-leak-kinds` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LeakKind {
    Definite,
    Indirect,
    Possible,
    Reachable,
    /// Every kind.
    All,
    /// No kind: nothing fails the run.
    None,
}

/// The test-suite gate.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    /// The exit code for leaks; `None` when no gate was asked for.
    pub code: Option<i32>,
    pub kinds: Vec<LeakKind>,
    pub suppressions: Suppressions,
}

impl Gate {
    /// The failure the report calls for, if any: leaked bytes of the chosen kinds at sites no
    /// suppression names.
    pub fn judge(&self, report: &Report) -> Option<Failure> {
        let code = self.code?;
        let counted: Amount = report
            .sites
            .iter()
            .filter(|site| !self.suppressions.suppress(site))
            .filter_map(|site| site.scan)
            .map(|kinds| self.chosen(&kinds))
            .sum();
        (counted.bytes > 0 || counted.blocks > 0).then_some(Failure::Leaked {
            bytes: counted.bytes,
            blocks: counted.blocks,
            code,
        })
    }

    /// The chosen kinds' bytes and blocks among `kinds`.
    fn chosen(&self, kinds: &KindAmounts) -> Amount {
        let picked =
            |kind: LeakKind| self.kinds.contains(&LeakKind::All) || self.kinds.contains(&kind);
        [
            (LeakKind::Definite, kinds.definitely_lost),
            (LeakKind::Indirect, kinds.indirectly_lost),
            (LeakKind::Possible, kinds.possibly_lost),
            (LeakKind::Reachable, kinds.still_reachable),
        ]
        .into_iter()
        .filter(|(kind, _)| picked(*kind))
        .map(|(_, amount)| amount)
        .sum()
    }
}

/// LeakSanitizer's `leak:` suppressions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suppressions {
    patterns: Vec<String>,
}

impl Suppressions {
    /// Reads `path`: one `leak:PATTERN` a line; blank lines and `#` comments skipped.
    pub fn load(path: &Path) -> Result<Suppressions, Failure> {
        let failure = |reason: String| Failure::Suppressions {
            path: path.to_owned(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|e| failure(e.to_string()))?;
        Suppressions::parse(&text).map_err(|e| failure(format!("{e:#}")))
    }

    /// These and `other`'s.
    pub fn extend(&mut self, other: Suppressions) {
        self.patterns.extend(other.patterns);
    }

    fn parse(text: &str) -> Result<Suppressions> {
        let mut patterns = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.strip_prefix("leak:") {
                Some(pattern) if !pattern.is_empty() => patterns.push(pattern.to_owned()),
                _ => bail!(
                    "line {}: `{line}` is not `leak:PATTERN` (LeakSanitizer's format)",
                    number + 1
                ),
            }
        }
        Ok(Suppressions { patterns })
    }

    /// Whether a pattern names a frame of `site`'s stack.
    pub fn suppress(&self, site: &SiteReport) -> bool {
        site.frames.iter().any(|frame| {
            [
                frame.function.as_deref(),
                frame.file.as_deref(),
                frame.module.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|text| self.patterns.iter().any(|p| matches(p, text)))
        })
    }
}

/// LeakSanitizer's matching: `pattern` occurs in `text`, `*` standing for any run of
/// characters, `^` anchoring it to the start and `$` to the end.
fn matches(pattern: &str, text: &str) -> bool {
    let (anchored_start, pattern) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (anchored_end, pattern) = match pattern.strip_suffix('$') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let pieces: Vec<&str> = pattern.split('*').collect();
    let mut at = 0;
    for (index, piece) in pieces.iter().enumerate() {
        let first = index == 0;
        let last = index == pieces.len() - 1;
        if first && anchored_start {
            if !text.starts_with(piece) {
                return false;
            }
            at = piece.len();
        } else if last && anchored_end {
            return text.len() >= at + piece.len() && text.ends_with(piece);
        } else {
            match text[at..].find(piece) {
                Some(found) => at += found + piece.len(),
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_leak_sanitizer_matches_them() {
        assert!(matches("leak_here", "my_leak_here_too"));
        assert!(matches("^leak", "leak_here"));
        assert!(!matches("^leak", "my_leak"));
        assert!(matches("here$", "leak_here"));
        assert!(!matches("here$", "here_not"));
        assert!(matches("lib*.so", "/usr/lib/libfoo.so.1"));
        assert!(matches(
            "^std::*::push_back$",
            "std::vector<int>::push_back"
        ));
        assert!(!matches("^a*b$", "acb_"));
    }

    #[test]
    fn a_suppressions_file_is_leak_lines_comments_and_blanks() {
        let parsed =
            Suppressions::parse("# third party\nleak:libfoo.so\n\n  leak:^init_once$\n").unwrap();
        assert_eq!(parsed.patterns, ["libfoo.so", "^init_once$"]);
        let error = Suppressions::parse("leak:a\nrace:b\n").unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
    }
}

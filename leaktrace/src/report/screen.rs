//! The live view on a terminal: redrawn in place like top, each line within the terminal's
//! width, under the line that says what is attached.
//!
//! Piped, the live view is one block per interval at its full width, for scripts and logs;
//! on a terminal, lines that wrap would scroll the redrawn screen away. So a terminal gets
//! the view laid out narrow ([`crate::report::render_interval`] with a width), and any line
//! still too long is cut with `…`.

use std::{io::IsTerminal, os::fd::AsRawFd};

/// The width assumed for a terminal that does not tell its own.
pub const DEFAULT_COLUMNS: usize = 80;

/// Where the live view goes.
pub struct Screen {
    /// The terminal's width; `None` when the output is not a terminal.
    pub width: Option<usize>,
    /// Shown again at the top of every redraw: which process, which libraries.
    heading: String,
}

impl Screen {
    /// The screen of standard error (`to_stderr`) or standard output, with `heading`.
    pub fn of_output(to_stderr: bool, heading: String) -> Screen {
        let width = if to_stderr {
            terminal_width(&std::io::stderr())
        } else {
            terminal_width(&std::io::stdout())
        };
        Screen { width, heading }
    }

    /// What to print for one live view: on a terminal, the screen cleared, the heading, then
    /// the view, every line cut to the width; elsewhere the view as it is.
    pub fn frame(&self, view: &str) -> String {
        let Some(width) = self.width else {
            return view.to_owned();
        };
        let mut out = String::from("\x1b[H\x1b[2J");
        for line in std::iter::once(self.heading.as_str()).chain(view.lines()) {
            out.push_str(&fit(line, width));
            out.push('\n');
        }
        out
    }
}

/// The columns of `output`'s terminal, or `None` when it is not one.
fn terminal_width(output: &(impl IsTerminal + AsRawFd)) -> Option<usize> {
    if !output.is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize, which lives across the call.
    let asked = unsafe { libc::ioctl(output.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    Some(if asked == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        DEFAULT_COLUMNS
    })
}

/// `line` cut to `width` characters, its end replaced by `…` when cut.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `parts` joined by "; " into lines of at most `width` characters, each line after the
/// first indented by two spaces; a part longer than a line is [`fit`] to it.
pub fn wrap_parts<'a>(parts: impl IntoIterator<Item = &'a str>, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 2 + part.chars().count() <= width => {
                line.push_str("; ");
                line.push_str(part);
            }
            Some(_) => lines.push(fit(&format!("  {part}"), width)),
            None => lines.push(fit(part, width)),
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_with_an_ellipsis_and_short_ones_kept() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefg", 6), "abcde…");
        assert_eq!(fit("≈≈≈≈", 3), "≈≈…");
    }

    #[test]
    fn parts_wrap_at_their_separators_within_the_width() {
        let wrapped = wrap_parts(["[ 1.0s] live 2 MiB", "RSS 26 MiB", "lost events 0"], 32);
        assert_eq!(wrapped, "[ 1.0s] live 2 MiB; RSS 26 MiB\n  lost events 0");
        assert!(wrapped.lines().all(|l| l.chars().count() <= 32));
        assert_eq!(wrap_parts(["x".repeat(40).as_str()], 10), "xxxxxxxxx…");
    }

    #[test]
    fn a_frame_off_a_terminal_is_the_view_itself() {
        let screen = Screen {
            width: None,
            heading: "attached".into(),
        };
        assert_eq!(screen.frame("a\nb\n"), "a\nb\n");
        let narrow = Screen {
            width: Some(5),
            heading: "attached".into(),
        };
        assert_eq!(narrow.frame("abcdefgh\n"), "\x1b[H\x1b[2Jatta…\nabcd…\n");
    }
}

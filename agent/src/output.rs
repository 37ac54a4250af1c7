//! What the command line prints: stdout that survives a closed pipe, and text from others
//! (the hub's document, operators' suspend reasons, PVE) shown with control characters escaped.
//!
//! Rust ignores SIGPIPE, so `println!` panics when the reader went away (`drover journal
//! --audit | head`). The verbs print through [`outln!`](crate::outln) and [`out!`](crate::out)
//! instead: a closed pipe ends the process quietly with status 141 (128 + SIGPIPE, what a shell
//! shows for a program killed by SIGPIPE), any other write error with status 1.

use std::io::Write;

/// Writes to stdout; see the module documentation for what a failed write does.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("drover: error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` that survives a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `text` with every control character (escape sequences, bell, carriage return, newline)
/// shown as `\u{..}`, so text from the hub or an operator cannot repaint the terminal an
/// operator reads before signing. Printable text, including non-ASCII, is unchanged.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            escape_controls("a\u{1b}[2Jb\u{7}\n"),
            "a\\u{1b}[2Jb\\u{7}\\u{a}"
        );
        assert_eq!(escape_controls("\u{9b}x"), "\\u{9b}x");
    }
}

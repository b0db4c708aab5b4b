//! Output: human tables by default, or the API's JSON / YAML.

use clap::ValueEnum;
use serde_json::Value;

use crate::client::CtlError;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

/// A column: header and how to read a cell from an item.
pub type Column = (&'static str, fn(&Value) -> String);

/// Text of a scalar or a compact JSON for anything else.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Writes to stdout. A reader that went away (`meshpassctl export | head`) ends the
/// command quietly with 0, as Unix tools do; any other write error ends it with 1.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("meshpassctl: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// A line of progress between writes to the service: a reader that went away ends
/// nothing (`apply -f all.yaml | grep -q configured` must not leave the rest of the
/// file unsent behind an exit 0); the writes go on, only their report is lost. Any
/// other write error ends the command with 1, as [`write_out`].
pub fn write_progress(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("meshpassctl: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` through [`write_out`].
#[macro_export]
macro_rules! say {
    () => { $crate::render::write_out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::render::write_out(format_args!("{}\n", format_args!($($t)*))) };
}

/// Renders `items` as a table, or `whole` as JSON / YAML.
pub fn print(
    out: Output,
    whole: &Value,
    items: &[Value],
    columns: &[Column],
) -> Result<(), CtlError> {
    match out {
        Output::Json => {
            let s =
                serde_json::to_string_pretty(whole).map_err(|e| CtlError::Other(e.to_string()))?;
            crate::say!("{s}");
        }
        Output::Yaml => {
            let s = serde_yaml::to_string(whole).map_err(|e| CtlError::Other(e.to_string()))?;
            write_out(format_args!("{s}"));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| columns.iter().map(|(_, f)| f(i)).collect())
                .collect();
            let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.len()).collect();
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                let mut s = String::new();
                for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                    if i + 1 == cells.len() {
                        s.push_str(c);
                    } else {
                        s.push_str(&format!("{c:<w$}  "));
                    }
                }
                crate::say!("{}", s.trim_end());
            };
            line(columns.iter().map(|(h, _)| h.to_string()).collect());
            for r in rows {
                line(r);
            }
        }
    }
    Ok(())
}

/// One item of a stream (`audit tail --follow`): a table row, one JSON line, or one YAML
/// document after `---`, so that each format's own tools can read the whole stream.
pub fn print_streamed(out: Output, item: &Value, columns: &[Column]) -> Result<(), CtlError> {
    match out {
        Output::Table => {
            let cells: Vec<String> = columns.iter().map(|(_, f)| f(item)).collect();
            crate::say!("{}", cells.join("  "));
        }
        Output::Json => {
            let s = serde_json::to_string(item).map_err(|e| CtlError::Other(e.to_string()))?;
            crate::say!("{s}");
        }
        Output::Yaml => {
            let s = serde_yaml::to_string(item).map_err(|e| CtlError::Other(e.to_string()))?;
            write_out(format_args!("---\n{s}"));
        }
    }
    Ok(())
}

//! Reading a definition's text into a JSON document: JSON or YAML, chosen by file extension or,
//! failing that, by content, within the bounds of `bounds.rs`; files only when regular and not too
//! large. Syntax errors carry line and column.

use std::io::Read as _;
use std::path::Path;

use serde_json::Value;

use crate::error::LoadError;

/// The text format of a flag-definition document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// The format named by `name`'s extension; `None` when it names neither.
    pub fn from_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }

    /// The format of `name`, else guessed from the text: JSON when it starts with `{`.
    pub fn detect(name: &str, text: &str) -> Format {
        Format::from_name(name)
            .unwrap_or_else(|| if text.trim_start().starts_with('{') { Format::Json } else { Format::Yaml })
    }
}

/// Reads a definition file: only a regular file (not a FIFO, a device or a directory, also behind a
/// symlink), and at most `max_bytes` of it.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<String, LoadError> {
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let refuse = |message: String| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, message));
    // Checked before opening: opening a FIFO for reading blocks until someone writes to it.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".to_owned()));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".to_owned()));
    }
    if meta.len() > max_bytes {
        return Err(refuse(format!("{} bytes; at most {max_bytes}", meta.len())));
    }
    let mut text = String::new();
    // The file may grow after the check: read no more than the cap and one byte.
    file.take(max_bytes + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > max_bytes {
        return Err(refuse(format!("more than {max_bytes} bytes")));
    }
    Ok(text)
}

/// Parses `text` (named `file` in errors) into a JSON value, within the bounds of
/// [`crate::bounds`].
pub(crate) fn parse(file: &str, text: &str, format: Format) -> Result<Value, LoadError> {
    crate::bounds::check_text(file, text)?;
    let document = parse_unbounded(file, text, format)?;
    crate::bounds::check_value(file, &document)?;
    Ok(document)
}

fn parse_unbounded(file: &str, text: &str, format: Format) -> Result<Value, LoadError> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| LoadError::Syntax {
            file: file.to_owned(),
            line: e.line(),
            column: e.column(),
            message: strip_location(&e.to_string()),
            source: Box::new(e),
        }),
        Format::Yaml => serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            LoadError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: strip_location(&e.to_string()),
                source: Box::new(e),
            }
        }),
    }
}

/// serde's messages end in " at line L column C"; the location is printed separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension_and_content() {
        assert_eq!(Format::from_name("a/b.JSON"), Some(Format::Json));
        assert_eq!(Format::from_name("flags.yml"), Some(Format::Yaml));
        assert_eq!(Format::from_name("flags"), None);
        assert_eq!(Format::detect("-", "  {\"flags\":{}}"), Format::Json);
        assert_eq!(Format::detect("-", "flags: {}"), Format::Yaml);
    }

    #[test]
    fn json_syntax_error_is_located() {
        let err = parse("f.json", "{\n  \"flags\": {,}\n}", Format::Json).unwrap_err();
        let LoadError::Syntax { line, column, .. } = &err else { panic!("{err}") };
        assert_eq!((*line, *column), (2, 13));
        assert!(err.to_string().starts_with("f.json:2:13: syntax error: "), "{err}");
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let err = parse("f.yaml", "flags:\n  a: [1, 2\n  b: 3\n", Format::Yaml).unwrap_err();
        let LoadError::Syntax { file, line, .. } = &err else { panic!("{err}") };
        assert_eq!(file, "f.yaml");
        assert!(*line >= 2, "{err}");
    }
}

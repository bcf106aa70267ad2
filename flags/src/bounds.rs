//! Bounds on a definition checked before the expensive work, so a hostile or broken file costs
//! linear time and bounded memory: the text's size and nesting (a linear scan before any parser
//! sees it — YAML scanners are quadratic in nesting depth), then the parsed document's node and
//! flag counts. Every refusal is located (line and column, or the key path).

use serde_json::Value;

use crate::error::{LoadError, Problem};

/// A file larger than this is not read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Deepest nesting of mappings and sequences (serde_json's own recursion limit is 128).
pub const MAX_DEPTH: usize = 128;
/// Deepest block indentation, in columns, of a YAML line.
pub const MAX_INDENT: usize = 4 * MAX_DEPTH;
/// Most values (mappings, sequences, scalars) in one document.
pub const MAX_NODES: usize = 1_000_000;
/// Most flags in one document.
pub const MAX_FLAGS: usize = 10_000;

/// Scans `text` once for nesting past [`MAX_DEPTH`] — flow brackets outside quoted strings and
/// comments, and YAML block indentation past [`MAX_INDENT`] — before it is parsed.
pub(crate) fn check_text(file: &str, text: &str) -> Result<(), LoadError> {
    let too_deep = |line: usize, column: usize, message: String| LoadError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: message.clone(),
        source: message.into(),
    };
    let (mut line, mut column) = (1usize, 0usize);
    let (mut depth, mut indent, mut at_line_start) = (0usize, 0usize, true);
    let mut quote: Option<char> = None;
    let (mut escaped, mut comment) = (false, false);
    // The last character that was not blank (a quote opens a string only where a scalar can
    // start), and whether a blank came just before (a `#` then starts a comment).
    let (mut last, mut blank_before) = ('\n', true);
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            (line, column, indent, at_line_start, comment, blank_before) = (line + 1, 0, 0, true, false, true);
            if quote.is_none() {
                last = '\n';
            }
            continue;
        }
        if at_line_start {
            if quote.is_none() && c == ' ' {
                indent += 1;
                if indent > MAX_INDENT {
                    return Err(too_deep(line, column, format!("indented deeper than {MAX_INDENT} columns")));
                }
                continue;
            }
            at_line_start = false;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' if q == '"' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            (last, blank_before) = (c, false);
            continue;
        }
        match c {
            '"' | '\'' if matches!(last, '\n' | ':' | '-' | '[' | '{' | ',' | '?') => quote = Some(c),
            '#' if blank_before => comment = true,
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep(line, column, format!("nested deeper than {MAX_DEPTH} levels")));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == ' ' || c == '\t' {
            blank_before = true;
        } else {
            (last, blank_before) = (c, false);
        }
    }
    Ok(())
}

/// Counts the parsed document's values (without recursion) and its flags.
pub(crate) fn check_value(file: &str, document: &Value) -> Result<(), LoadError> {
    let refuse = |path: &str, message: String| LoadError::Invalid {
        file: file.to_owned(),
        problems: vec![Problem { path: path.to_owned(), message }],
    };
    let flags = document.get("flags").and_then(Value::as_object).map_or(0, serde_json::Map::len);
    if flags > MAX_FLAGS {
        return Err(refuse("flags", format!("{flags} flags; at most {MAX_FLAGS}")));
    }
    let (mut nodes, mut stack) = (0usize, vec![document]);
    while let Some(v) = stack.pop() {
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(refuse("", format!("more than {MAX_NODES} values")));
        }
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> Option<(usize, usize)> {
        match check_text("f", text) {
            Ok(()) => None,
            Err(LoadError::Syntax { line, column, .. }) => Some((line, column)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn deep_flow_nesting_is_refused_where_it_gets_too_deep() {
        let deep = format!("flags:\n  a:\n    targeting: {}1{}\n", "[".repeat(200), "]".repeat(200));
        assert_eq!(located(&deep), Some((3, 16 + MAX_DEPTH)));
        let fine = format!("flags:\n  a:\n    targeting: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(located(&fine), None);
        // Brackets in strings and comments do not count; nor does an apostrophe inside a word.
        let quoted =
            format!("a: \"{}\"\nb: '{}'\n# {}\nc: it's [1]\n", "[".repeat(300), "{".repeat(300), "[".repeat(300));
        assert_eq!(located(&quoted), None);
        let json = format!("{{\"a\": \"\\\" [\", \"b\": {}{}}}", "[".repeat(129), "]".repeat(129));
        assert!(located(&json).is_some());
    }

    #[test]
    fn deep_block_indentation_is_refused() {
        let mut deep = String::new();
        for level in 0..300 {
            deep.push_str(&" ".repeat(level * 2));
            deep.push_str("a:\n");
        }
        assert_eq!(located(&deep), Some((258, MAX_INDENT + 1)));
    }

    #[test]
    fn documents_are_bounded_in_flags_and_values() {
        let flags: serde_json::Map<String, Value> = (0..=MAX_FLAGS).map(|i| (format!("f{i}"), Value::Null)).collect();
        let doc = serde_json::json!({ "flags": flags });
        let e = check_value("f", &doc).unwrap_err().to_string();
        assert!(e.contains("flags: 10001 flags; at most 10000"), "{e}");
        let doc = Value::Array(vec![Value::Null; MAX_NODES]);
        assert!(check_value("f", &doc).is_err());
        assert!(check_value("f", &serde_json::json!({"flags": {"a": {"state": "ENABLED"}}})).is_ok());
    }
}

//! Load errors: a syntax error located by file, line and column; semantic problems located by file
//! and key path (`flags.new-checkout.ramp.treatment`), every problem of a file reported at once.

use std::fmt;
use std::path::PathBuf;

/// Why a flag-definition file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid JSON/YAML.
    #[error("{file}:{line}:{column}: syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The document parsed but breaks the flag-definition rules; every problem found.
    #[error("{}", Problems { file, problems })]
    Invalid { file: String, problems: Vec<Problem> },
}

impl LoadError {
    /// The semantic problems, if this is an [`LoadError::Invalid`] error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// One semantic problem: where (key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path from the document root, e.g. `flags.new-checkout.ramp.treatment`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Problems<'a> {
    file: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.file)?;
        }
        Ok(())
    }
}

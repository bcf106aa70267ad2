//! A complete, immutable set of compiled flags loaded from one document: what a snapshot holds.

use std::collections::HashMap;
use std::path::Path;

use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value};

use crate::bounds::MAX_FILE_BYTES;
use crate::context::Context;
use crate::error::{LoadError, Problem};
use crate::flag::Flag;
use crate::resolution::{ErrorCode, Resolution};
use crate::source::{Format, parse, read_file};
use crate::validate::{Mode, validate};

/// Compiled flags in definition order, with the document they came from.
#[derive(Debug)]
pub struct FlagSet {
    flags: Vec<Flag>,
    index: HashMap<String, usize>,
    metadata: Map<String, Value>,
    definition: Value,
    /// Located problems of the flags kept out of service (tolerant loads only).
    quarantined: Vec<Problem>,
}

impl FlagSet {
    /// Reads and compiles a JSON or YAML file (format by extension, else by content).
    pub fn from_file(path: impl AsRef<Path>) -> Result<FlagSet, LoadError> {
        let path = path.as_ref();
        let text = read_file(path, MAX_FILE_BYTES)?;
        let name = path.display().to_string();
        let format = Format::detect(&name, &text);
        FlagSet::from_text(&name, &text, format)
    }

    /// Compiles `text`, named `name` in errors; format from `name`'s extension, else by content.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(name: &str, text: &str) -> Result<FlagSet, LoadError> {
        FlagSet::from_text(name, text, Format::detect(name, text))
    }

    /// Compiles `text` in the given format.
    pub fn from_text(name: &str, text: &str, format: Format) -> Result<FlagSet, LoadError> {
        FlagSet::from_value(name, parse(name, text, format)?)
    }

    /// Compiles an already parsed document.
    pub fn from_value(name: &str, definition: Value) -> Result<FlagSet, LoadError> {
        FlagSet::compile(name, definition, Mode::Strict)
    }

    /// Reads and compiles a file as flagd loads it: a flag whose targeting cannot compile is kept
    /// out of service (see [`FlagSet::quarantined`]) instead of refusing the file. For a running
    /// sidecar; where a person writes flags, use the strict [`FlagSet::from_file`].
    pub fn from_file_tolerant(path: impl AsRef<Path>) -> Result<FlagSet, LoadError> {
        let path = path.as_ref();
        let text = read_file(path, MAX_FILE_BYTES)?;
        let name = path.display().to_string();
        let format = Format::detect(&name, &text);
        FlagSet::from_text_tolerant(&name, &text, format)
    }

    /// [`FlagSet::from_text`], tolerant of flags whose targeting cannot compile.
    pub fn from_text_tolerant(name: &str, text: &str, format: Format) -> Result<FlagSet, LoadError> {
        FlagSet::compile(name, parse(name, text, format)?, Mode::Tolerant)
    }

    fn compile(name: &str, definition: Value, mode: Mode) -> Result<FlagSet, LoadError> {
        let validated =
            validate(&definition, mode).map_err(|problems| LoadError::Invalid { file: name.to_owned(), problems })?;
        let index = validated.flags.iter().enumerate().map(|(i, f)| (f.key.clone(), i)).collect();
        Ok(FlagSet {
            flags: validated.flags,
            index,
            metadata: validated.metadata,
            definition,
            quarantined: validated.quarantined,
        })
    }

    /// The located problems of the flags a tolerant load kept out of service (each such flag
    /// evaluates to `PARSE_ERROR`); empty after a strict load.
    pub fn quarantined(&self) -> &[Problem] {
        &self.quarantined
    }

    /// The flag `key`.
    pub fn get(&self, key: &str) -> Option<&Flag> {
        self.index.get(key).map(|&i| &self.flags[i])
    }

    /// The position of flag `key` in [`FlagSet::flags`].
    pub fn position(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// All flags, in definition order.
    pub fn flags(&self) -> &[Flag] {
        &self.flags
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Top-level `metadata`.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The document as loaded (JSON form).
    pub fn definition(&self) -> &Value {
        &self.definition
    }

    /// Evaluates `key`; an unknown key resolves to an error with [`ErrorCode::FlagNotFound`].
    pub fn evaluate<'s>(&'s self, key: &str, ctx: &Context<'_>, arena: &Bump) -> Resolution<'s> {
        match self.get(key) {
            Some(flag) => flag.evaluate(ctx, arena),
            None => Resolution::error(ErrorCode::FlagNotFound),
        }
    }
}

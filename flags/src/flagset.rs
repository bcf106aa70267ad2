//! A complete, immutable set of compiled flags loaded from one document: what a snapshot holds.

use std::collections::HashMap;
use std::path::Path;

use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::LoadError;
use crate::flag::Flag;
use crate::resolution::{ErrorCode, Resolution};
use crate::source::{Format, parse};
use crate::validate::validate;

/// Compiled flags in definition order, with the document they came from.
#[derive(Debug)]
pub struct FlagSet {
    flags: Vec<Flag>,
    index: HashMap<String, usize>,
    metadata: Map<String, Value>,
    definition: Value,
}

impl FlagSet {
    /// Reads and compiles a JSON or YAML file (format by extension, else by content).
    pub fn from_file(path: impl AsRef<Path>) -> Result<FlagSet, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
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
        let validated =
            validate(&definition).map_err(|problems| LoadError::Invalid { file: name.to_owned(), problems })?;
        let index = validated.flags.iter().enumerate().map(|(i, f)| (f.key.clone(), i)).collect();
        Ok(FlagSet { flags: validated.flags, index, metadata: validated.metadata, definition })
    }

    /// The flag `key`.
    pub fn get(&self, key: &str) -> Option<&Flag> {
        self.index.get(key).map(|&i| &self.flags[i])
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

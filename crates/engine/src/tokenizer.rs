//! A model's tokenizer without its weights: the GGUF's vocabulary alone,
//! for a client (the bench) that must count tokens the way the server's
//! model does when the server does not say.

use std::path::Path;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use crate::{llama_backend, LoadError};

pub struct Tokenizer {
    model: LlamaModel,
}

impl Tokenizer {
    /// Loads only the vocabulary of the GGUF at `path` (milliseconds, and a
    /// few MB, even for a model of many GB).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        if !path.is_file() {
            return Err(LoadError::Missing(path.to_path_buf()));
        }
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(llama_backend(), path, &params)
            .map_err(|e| LoadError::Model { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { model })
    }

    /// Tokens in `text` as generated output: no BOS, and special-token
    /// spellings counted as the plain text they are in an answer.
    pub fn count(&self, text: &str) -> usize {
        self.model.vocab().tokenize(text.as_bytes(), false, false).len()
    }
}

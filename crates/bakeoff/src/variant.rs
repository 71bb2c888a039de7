//! What is being compared: a GGUF under the embedded engine, the same GGUF
//! under llama-server (the runtime control), or any OpenAI-compatible URL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One contestant, as given on the command line: `NAME=KIND:VALUE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kind {
    /// `engine:MODEL`: a catalog id or a GGUF path, served by `switchyard serve`.
    Engine { model: String },
    /// `llama-server:FILE`: the same kind of file under llama.cpp's own server.
    LlamaServer { model: PathBuf },
    /// `url:BASE[@MODEL]`: already served elsewhere; only targeted.
    Url { base: String, model: String },
}

impl Variant {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let usage = "give NAME=engine:MODEL, NAME=llama-server:FILE or NAME=url:BASE_URL[@MODEL]";
        let (name, rest) = spec.split_once('=').ok_or_else(|| format!("`{spec}`: {usage}"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("`{name}`: a variant name is letters, digits, `-`, `_` or `.` (it names a folder)"));
        }
        let (kind, value) = rest.split_once(':').ok_or_else(|| format!("`{spec}`: {usage}"))?;
        let kind = match kind {
            "engine" => Kind::Engine { model: value.to_string() },
            "llama-server" => Kind::LlamaServer { model: PathBuf::from(value) },
            "url" => {
                // A base URL holds `:` itself; the model follows the last `@`.
                let (base, model) = value.rsplit_once('@').unwrap_or((value, "default"));
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(format!("`{base}`: a url variant's base starts with http:// or https://"));
                }
                Kind::Url { base: base.trim_end_matches('/').to_string(), model: model.to_string() }
            }
            other => return Err(format!("`{other}` is not a variant kind; {usage}")),
        };
        if value.is_empty() {
            return Err(format!("`{spec}`: nothing after `{}:`", rest.split(':').next().unwrap_or("")));
        }
        Ok(Self { name: name.to_string(), kind })
    }

    /// The runtime, in words, for the table.
    pub fn runtime(&self) -> &'static str {
        match self.kind {
            Kind::Engine { .. } => "switchyard engine",
            Kind::LlamaServer { .. } => "llama-server",
            Kind::Url { .. } => "endpoint",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_by_kind_and_bad_ones_say_the_form() {
        assert_eq!(Variant::parse("q8=engine:/m/q8.gguf").unwrap().kind, Kind::Engine { model: "/m/q8.gguf".into() });
        assert_eq!(
            Variant::parse("ls=llama-server:a.gguf").unwrap().kind,
            Kind::LlamaServer { model: "a.gguf".into() }
        );
        assert_eq!(
            Variant::parse("cloud=url:http://127.0.0.1:9000/v1@gpt").unwrap().kind,
            Kind::Url { base: "http://127.0.0.1:9000/v1".into(), model: "gpt".into() }
        );
        assert_eq!(
            Variant::parse("u=url:http://h:1/v1/").unwrap().kind,
            Kind::Url { base: "http://h:1/v1".into(), model: "default".into() }
        );
        for bad in ["noequals", "a b=engine:x", "x=gpu:y", "x=url:ftp://h", "x=engine:"] {
            assert!(Variant::parse(bad).is_err(), "{bad}");
        }
    }
}

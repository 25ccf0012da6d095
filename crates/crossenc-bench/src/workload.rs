//! Workload files: JSON lines of `{"query", "documents", ...}` (other fields ignored).

use std::path::Path;

use serde::Deserialize;

use crate::BenchError;

/// One request of the workload: a Rerank of `documents` against `query`.
#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    pub query: String,
    pub documents: Vec<String>,
}

/// Reads a workload; every line must be a query row.
pub fn load_workload(path: &Path) -> Result<Vec<Query>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut queries = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let query = serde_json::from_str(line).map_err(|e| BenchError::Workload {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        queries.push(query);
    }
    if queries.is_empty() {
        return Err(BenchError::Workload {
            path: path.to_path_buf(),
            line: 0,
            message: "no queries".into(),
        });
    }
    Ok(queries)
}

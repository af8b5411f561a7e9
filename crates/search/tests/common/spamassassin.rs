//! The SpamAssassin public corpus the index benchmark uses
//! (`crates/search/benches/fetch-corpus.sh`): shared by the benchmark and
//! the tests that compare against it (they print SKIPPED without it).

use std::path::{Path, PathBuf};

/// Where the corpus is: `TERN_SEARCH_CORPUS`, or the temp dir's
/// `tern-search-corpus`.
pub fn dir() -> PathBuf {
    std::env::var_os("TERN_SEARCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tern-search-corpus"))
}

/// The raw messages under `dir` (JSON files with a `text` member), in path
/// order; empty when there is no corpus.
pub fn load(dir: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .is_some_and(|n| n != "file_list.json" && n != "package.json")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .filter_map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            Some(v.get("text")?.as_str()?.as_bytes().to_vec())
        })
        .collect()
}

/// The corpus's messages, or `None` after printing that `test` SKIPPED.
pub fn load_or_skip(test: &str) -> Option<Vec<Vec<u8>>> {
    let raw = load(&dir());
    if raw.is_empty() {
        println!(
            "SKIPPED {test}: no SpamAssassin corpus in {} (crates/search/benches/fetch-corpus.sh)",
            dir().display()
        );
        return None;
    }
    Some(raw)
}

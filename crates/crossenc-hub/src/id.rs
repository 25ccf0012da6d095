//! Model ids and revisions, checked before either becomes part of a cache path or a URL:
//! both are joined onto the cache folder, so anything that could climb out of it (`..`, a
//! leading `/`) or smuggle in a URL is refused here, once.

use std::fmt;

use crate::HubError;

/// Longest org or name part the hub accepts.
const MAX_PART: usize = 96;
/// Longest revision we accept; branch names on the hub are far shorter.
const MAX_REVISION: usize = 256;

/// A checked Hugging Face model id, `ORG/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelId {
    text: String,
    slash: usize,
}

impl ModelId {
    /// Checks `text` is exactly `ORG/NAME` with the hub's characters, so it is safe to use
    /// as a cache folder name and in a URL.
    pub fn parse(text: &str) -> Result<ModelId, HubError> {
        let refuse = |reason: &str| HubError::InvalidId {
            id: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(reason) = shape_problem(text) {
            return Err(refuse(reason));
        }
        let slash = text.find('/').ok_or_else(|| refuse("it has no `/`"))?;
        for part in [&text[..slash], &text[slash + 1..]] {
            if let Some(reason) = part_problem(part) {
                return Err(refuse(&reason));
            }
        }
        Ok(ModelId {
            text: text.to_owned(),
            slash,
        })
    }

    /// A cheap guess whether `text` is meant as an id rather than a local path: one `/` and
    /// no leading `/`, `.` or `~`. It does not validate; `models/x` passes too, so a caller
    /// should prefer a local folder that exists.
    pub fn looks_like_id(text: &str) -> bool {
        text.matches('/').count() == 1 && !text.starts_with(['/', '.', '~'])
    }

    /// The id as given, `ORG/NAME`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The part before the `/`.
    pub fn org(&self) -> &str {
        &self.text[..self.slash]
    }

    /// The part after the `/`.
    pub fn name(&self) -> &str {
        &self.text[self.slash + 1..]
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What is wrong with the text as a whole: the mistakes people actually make (a URL, a
/// path, a missing org) get their own words.
fn shape_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("it is empty")
    } else if text.contains("://") {
        Some("it is a URL, not an id")
    } else if text.contains("..") {
        Some("it contains `..`")
    } else if text.starts_with(['/', '~']) {
        Some("it is a path, not an id")
    } else if text.matches('/').count() != 1 {
        Some("it must have exactly one `/`")
    } else {
        None
    }
}

/// What is wrong with the org or the name.
fn part_problem(part: &str) -> Option<String> {
    if part.is_empty() {
        return Some("the org or the name is empty".to_owned());
    }
    if let Some(bad) = part.chars().find(|c| !is_id_char(*c)) {
        return Some(format!("`{bad}` is not allowed (only A-Z a-z 0-9 . _ -)"));
    }
    if part.starts_with(['.', '-']) {
        return Some(format!("`{part}` starts with `.` or `-`"));
    }
    if part.len() > MAX_PART {
        return Some(format!("`{part}` is longer than {MAX_PART} characters"));
    }
    None
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a revision (branch, tag, `refs/pr/N` or commit) before it is joined onto
/// `refs/` in the cache: `/` is allowed between segments, nothing that climbs out.
pub(crate) fn check_revision(revision: &str) -> Result<(), HubError> {
    let problem = if revision.len() > MAX_REVISION {
        Some(format!("it is longer than {MAX_REVISION} characters"))
    } else {
        relative_path_problem(revision)
    };
    match problem {
        Some(reason) => Err(HubError::InvalidRevision {
            revision: revision.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why `text` is not a plain relative path of `[A-Za-z0-9._-]` segments joined by `/`; used
/// for revisions and for the shard names an index lists, both of which become paths.
pub(crate) fn relative_path_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("it is empty".to_owned());
    }
    if text.contains("..") {
        return Some("it contains `..`".to_owned());
    }
    if let Some(bad) = text.chars().find(|c| *c != '/' && !is_id_char(*c)) {
        return Some(format!("`{bad}` is not allowed (only A-Z a-z 0-9 . _ - /)"));
    }
    if text
        .split('/')
        .any(|segment| segment.is_empty() || segment == ".")
    {
        return Some("it has a leading, trailing or doubled `/`, or a `.` segment".to_owned());
    }
    None
}

/// A full commit hash, as the hub and the cache's `snapshots/` name commits.
pub(crate) fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

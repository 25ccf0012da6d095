//! Prompt templates: the text a decoder reranker reads around a query and a document
//! (a system prefix, an instruction, the pair, the assistant's suffix), and the answer
//! tokens whose logits make the score. Built-in ones reproduce their model card; a
//! TOML or JSON file serves a fine-tune with a prompt of its own.

use std::path::Path;

use serde::Deserialize;

use crate::ModelError;

/// A prompt around one (query, document) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    /// The built-in name, or the file it was read from.
    pub name: String,
    /// Text before the body, tokenized on its own and never cut.
    pub prefix: String,
    /// The body, with `{query}` and `{document}` (and `{instruction}`) in it: cut from
    /// its end when too long, so the document goes first, then the query.
    format: Vec<Segment>,
    /// Text after the body, tokenized on its own and never cut.
    pub suffix: String,
    /// The instruction where a request gives none; `None` where the format has no
    /// `{instruction}`.
    pub default_instruction: Option<String>,
    /// The tokens whose logits at the last position score a causal LM: (no, yes).
    pub answers: Option<Answers>,
}

/// The answer tokens of a yes/no reranker: its score is the softmax of their logits,
/// taking `yes`; the raw score is `yes - no`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    pub no: String,
    pub yes: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Instruction,
    Query,
    Document,
}

/// A template as a file spells it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    #[serde(default)]
    prefix: String,
    format: String,
    #[serde(default)]
    suffix: String,
    default_instruction: Option<String>,
    answers: Option<Answers>,
}

/// Qwen3-Reranker's prompt, as its model card builds it.
const QWEN3_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the \
requirements based on the Query and the Instruct provided. Note that the answer can only \
be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
const QWEN3_FORMAT: &str = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}";
const QWEN3_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
const QWEN3_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

impl PromptTemplate {
    /// The names of the built-in templates.
    pub const BUILT_IN: &'static [&'static str] = &["qwen3-reranker"];

    /// A built-in template by name, else a template file at that path.
    pub fn resolve(spec: &str) -> Result<Self, ModelError> {
        match spec {
            "qwen3-reranker" => Self::new(
                spec,
                TemplateFile {
                    prefix: QWEN3_PREFIX.into(),
                    format: QWEN3_FORMAT.into(),
                    suffix: QWEN3_SUFFIX.into(),
                    default_instruction: Some(QWEN3_INSTRUCTION.into()),
                    answers: Some(Answers {
                        no: "no".into(),
                        yes: "yes".into(),
                    }),
                },
            ),
            path => Self::from_file(Path::new(path)),
        }
    }

    fn from_file(path: &Path) -> Result<Self, ModelError> {
        let name = path.display().to_string();
        let error = |message: String| ModelError::Template {
            template: name.clone(),
            message,
        };
        if !path.is_file() {
            return Err(error(format!(
                "neither a built-in template ({}) nor a template file",
                Self::BUILT_IN.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: TemplateFile = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| error(e.to_string()))?,
            Some("toml") => toml::from_str(&text).map_err(|e| error(e.to_string()))?,
            _ => return Err(error("a template file is .toml or .json".into())),
        };
        Self::new(&name, file)
    }

    fn new(name: &str, file: TemplateFile) -> Result<Self, ModelError> {
        let error = |message: String| ModelError::Template {
            template: name.to_string(),
            message,
        };
        let format = parse_format(&file.format).map_err(error)?;
        let count = |wanted: &Segment| format.iter().filter(|s| *s == wanted).count();
        for (segment, placeholder) in [
            (Segment::Query, "{query}"),
            (Segment::Document, "{document}"),
        ] {
            if count(&segment) != 1 {
                return Err(error(format!(
                    "`format` must hold {placeholder} once; it holds it {} times",
                    count(&segment)
                )));
            }
        }
        match (count(&Segment::Instruction), &file.default_instruction) {
            (0, None) | (1, Some(_)) => {}
            (0, Some(_)) => {
                return Err(error(
                    "`default_instruction` is set, but `format` has no {instruction}".into(),
                ))
            }
            (1, None) => {
                return Err(error(
                    "`format` holds {instruction}: `default_instruction` must say what a \
                     request without one reads"
                        .into(),
                ))
            }
            (n, _) => {
                return Err(error(format!(
                    "`format` must hold {{instruction}} at most once; it holds it {n} times"
                )))
            }
        }
        if let Some(answers) = &file.answers {
            if answers.no.is_empty() || answers.yes.is_empty() || answers.no == answers.yes {
                return Err(error(
                    "`answers.no` and `answers.yes` must be two different tokens".into(),
                ));
            }
        }
        Ok(Self {
            name: name.to_string(),
            prefix: file.prefix,
            format,
            suffix: file.suffix,
            default_instruction: file.default_instruction,
            answers: file.answers,
        })
    }

    /// Whether a request may give an instruction.
    pub fn takes_instruction(&self) -> bool {
        self.default_instruction.is_some()
    }

    /// The body of one pair: the format with its placeholders filled (the request's
    /// instruction, else the default). Texts are put in as they are: braces in them are
    /// not placeholders.
    pub fn body(&self, instruction: Option<&str>, query: &str, document: &str) -> String {
        let instruction = instruction.or(self.default_instruction.as_deref());
        let mut body = String::with_capacity(query.len() + document.len() + 128);
        for segment in &self.format {
            body.push_str(match segment {
                Segment::Text(text) => text,
                Segment::Instruction => instruction.unwrap_or_default(),
                Segment::Query => query,
                Segment::Document => document,
            });
        }
        body
    }
}

/// The format's literal text and placeholders; any other `{name}` is refused, and
/// `{{` and `}}` stand for braces.
fn parse_format(format: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    while let Some(at) = rest.find(['{', '}']) {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        for escaped in ["{{", "}}"] {
            if let Some(after) = rest.strip_prefix(escaped) {
                text.push_str(&escaped[..1]);
                rest = after;
            }
        }
        if !rest.starts_with('{') {
            if rest.starts_with('}') {
                return Err(
                    "`format` has a `}` that closes nothing (write `}}` for a brace)".into(),
                );
            }
            continue;
        }
        let end = rest
            .find('}')
            .ok_or("`format` has a `{` that is never closed (write `{{` for a brace)")?;
        let segment = match &rest[1..end] {
            "instruction" => Segment::Instruction,
            "query" => Segment::Query,
            "document" => Segment::Document,
            other => {
                return Err(format!(
                    "`format` holds {{{other}}}: the placeholders are {{instruction}}, \
                     {{query}} and {{document}}"
                ))
            }
        };
        if !text.is_empty() {
            segments.push(Segment::Text(std::mem::take(&mut text)));
        }
        segments.push(segment);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        segments.push(Segment::Text(text));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_reranker_fills_the_model_cards_body() {
        let t = PromptTemplate::resolve("qwen3-reranker").unwrap();
        assert_eq!(
            t.body(None, "what is {x}?", "a {document}"),
            format!("<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: what is {{x}}?\n<Document>: a {{document}}")
        );
        assert_eq!(
            t.body(Some("Find code"), "q", "d"),
            "<Instruct>: Find code\n<Query>: q\n<Document>: d"
        );
        assert!(t.takes_instruction());
    }

    #[test]
    fn a_format_without_a_placeholder_or_with_an_unknown_one_is_refused() {
        let file = |format: &str| TemplateFile {
            prefix: String::new(),
            format: format.into(),
            suffix: String::new(),
            default_instruction: None,
            answers: None,
        };
        let message = |format| {
            PromptTemplate::new("t", file(format))
                .unwrap_err()
                .to_string()
        };
        assert!(
            message("Q: {query}").contains("{document} once"),
            "{}",
            message("Q: {query}")
        );
        assert!(message("{query} {document} {doc}").contains("{doc}"));
        assert!(message("{query} {document} {").contains("never closed"));
        assert!(message("{instruction} {query} {document}").contains("default_instruction"));
        let braces = PromptTemplate::new("t", file("{{{query}}} {document}")).unwrap();
        assert_eq!(braces.body(None, "q", "d"), "{q} d");
    }
}

//! Prompt templates: the text a decoder reranker reads around a query and a document
//! (a system prefix, an instruction, the pair, the assistant's suffix), and the answer
//! tokens whose logits make the score. Built-in ones reproduce their model card or
//! package; a TOML or JSON file serves a fine-tune with a prompt of its own.
//!
//! A body is tokenized the way its reference does: as one text (Qwen3-Reranker's card),
//! or piece by piece (mixedbread's and FlagEmbedding's packages), which gives other ids
//! where a piece's end would join the next piece's start ("." before a newline).

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
    /// The query and document between the prefix and the suffix.
    body: Body,
    /// Text after the body, tokenized on its own and never cut.
    pub suffix: String,
    /// The instruction where a request gives none; `None` where the format has no
    /// `{instruction}`, or where an instruction is optional (`instruction_form`).
    pub default_instruction: Option<String>,
    /// How a request's instruction is written in: `{instruction}` in this text, and
    /// nothing at all where a request gives none (mixedbread's optional line).
    instruction_form: Option<Vec<Segment>>,
    /// The tokens whose logits at the last position score a causal LM: (no, yes), or
    /// yes alone.
    pub answers: Option<Answers>,
}

/// The answer tokens of a yes/no reranker: with both, its score is the softmax of
/// their logits, taking `yes`, and the raw score is `yes - no`; with `yes` alone
/// (FlagEmbedding's LLM rerankers) the raw score is that logit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    pub no: Option<String>,
    pub yes: String,
}

impl Answers {
    /// The head's labels, in the order of its rows.
    pub fn labels(&self) -> Vec<String> {
        self.no.iter().chain([&self.yes]).cloned().collect()
    }
}

/// How a body is tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// Filled in, then tokenized as one text and cut from its end, so the document goes
    /// first, then the query.
    Whole(Vec<Segment>),
    /// Each piece tokenized alone, in order. The one with `{query}` is cut to three
    /// quarters of the body's budget, then the one with `{document}` to what is left:
    /// the other pieces are never cut.
    Pieces(Vec<Vec<Segment>>),
}

/// What a piece of a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceRole {
    Query,
    Document,
    /// Text of the template (and the instruction): never cut.
    Fixed,
}

/// A body filled in for one pair.
pub enum FilledBody {
    /// One text, and where the document starts in it (bytes).
    Whole { text: String, document_at: usize },
    /// The pieces in order.
    Pieces(Vec<(PieceRole, String)>),
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
    /// A body tokenized as one text.
    format: Option<String>,
    /// A body tokenized piece by piece.
    pieces: Option<Vec<String>>,
    #[serde(default)]
    suffix: String,
    default_instruction: Option<String>,
    instruction_form: Option<String>,
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

/// mixedbread's `MxbaiRerankV2` (mxbai-rerank 0.1.6): its chat prefix, the query piece
/// (with an instruction line only where one is given), the separator, the document
/// piece, the separator, the task, the chat suffix; "1" against "0".
const MXBAI_PREFIX: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n";
const MXBAI_TASK: &str = "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:";
const MXBAI_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n";

/// FlagEmbedding's `FlagLLMReranker` (1.4.2): BOS, `A: ` and the query, the separator,
/// `B: ` and the passage, the separator, then the prompt, which a request's instruction
/// replaces; the logit of "Yes" is the score.
const BGE_GEMMA_PROMPT: &str = "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'.";

impl PromptTemplate {
    /// The names of the built-in templates.
    pub const BUILT_IN: &'static [&'static str] =
        &["qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"];

    /// A built-in template by name, else a template file at that path.
    pub fn resolve(spec: &str) -> Result<Self, ModelError> {
        let answers = |no: Option<&str>, yes: &str| {
            Some(Answers {
                no: no.map(Into::into),
                yes: yes.into(),
            })
        };
        let pieces = |pieces: &[&str]| Some(pieces.iter().map(|p| p.to_string()).collect());
        let file = match spec {
            "qwen3-reranker" => TemplateFile {
                prefix: QWEN3_PREFIX.into(),
                format: Some(QWEN3_FORMAT.into()),
                pieces: None,
                suffix: QWEN3_SUFFIX.into(),
                default_instruction: Some(QWEN3_INSTRUCTION.into()),
                instruction_form: None,
                answers: answers(Some("no"), "yes"),
            },
            "mxbai-rerank-v2" => TemplateFile {
                prefix: MXBAI_PREFIX.into(),
                format: None,
                pieces: pieces(&[
                    "{instruction}query: {query}",
                    "\n",
                    "document: {document}",
                    "\n",
                    MXBAI_TASK,
                ]),
                suffix: MXBAI_SUFFIX.into(),
                default_instruction: None,
                instruction_form: Some("instruction: {instruction}\n".into()),
                answers: answers(Some("0"), "1"),
            },
            "bge-reranker-gemma" => TemplateFile {
                prefix: "<bos>".into(),
                format: None,
                pieces: pieces(&["A: {query}", "\n", "B: {document}", "\n", "{instruction}"]),
                suffix: String::new(),
                default_instruction: Some(BGE_GEMMA_PROMPT.into()),
                instruction_form: None,
                answers: answers(None, "Yes"),
            },
            path => return Self::from_file(Path::new(path)),
        };
        Self::new(spec, file)
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
        let body = match (&file.format, &file.pieces) {
            (Some(format), None) => Body::Whole(parse_format(format, "format").map_err(error)?),
            (None, Some(pieces)) if !pieces.is_empty() => Body::Pieces(
                pieces
                    .iter()
                    .map(|piece| parse_format(piece, "pieces"))
                    .collect::<Result<_, _>>()
                    .map_err(error)?,
            ),
            _ => {
                return Err(error(
                    "give the body as `format` (one text) or as `pieces` (each tokenized \
                     alone), one of the two"
                        .into(),
                ))
            }
        };
        body.check().map_err(error)?;
        let instruction_form = match &file.instruction_form {
            None => None,
            Some(form) => {
                let form = parse_format(form, "instruction_form").map_err(error)?;
                let placeholders: Vec<_> = form
                    .iter()
                    .filter(|s| !matches!(s, Segment::Text(_)))
                    .collect();
                if placeholders != [&Segment::Instruction] {
                    return Err(error(
                        "`instruction_form` must hold {instruction} once, and no other \
                         placeholder"
                            .into(),
                    ));
                }
                Some(form)
            }
        };
        let optional = instruction_form.is_some();
        match (body.count(&Segment::Instruction), &file.default_instruction) {
            (0, None) if !optional => {}
            (1, Some(_)) if !optional => {}
            (1, None) if optional => {}
            (0, _) if optional || file.default_instruction.is_some() => {
                return Err(error(
                    "`default_instruction` or `instruction_form` is set, but the body has no \
                     {instruction}"
                        .into(),
                ))
            }
            (1, None) => {
                return Err(error(
                    "the body holds {instruction}: `default_instruction` must say what a \
                     request without one reads, or `instruction_form` how one is written in \
                     (and nothing where none is given)"
                        .into(),
                ))
            }
            (1, Some(_)) => {
                return Err(error(
                    "`default_instruction` and `instruction_form` exclude each other".into(),
                ))
            }
            (n, _) => {
                return Err(error(format!(
                    "the body must hold {{instruction}} at most once; it holds it {n} times"
                )))
            }
        }
        if let Some(answers) = &file.answers {
            let no = answers.no.as_deref();
            if answers.yes.is_empty() || no == Some("") || no == Some(answers.yes.as_str()) {
                return Err(error(
                    "`answers.yes` (and `answers.no`, if given) must be tokens, two \
                     different ones"
                        .into(),
                ));
            }
        }
        Ok(Self {
            name: name.to_string(),
            prefix: file.prefix,
            body,
            suffix: file.suffix,
            default_instruction: file.default_instruction,
            instruction_form,
            answers: file.answers,
        })
    }

    /// Whether a request may give an instruction.
    pub fn takes_instruction(&self) -> bool {
        self.default_instruction.is_some() || self.instruction_form.is_some()
    }

    /// Whether the body is tokenized piece by piece.
    pub fn in_pieces(&self) -> bool {
        matches!(self.body, Body::Pieces(_))
    }

    /// The body of one pair, its placeholders filled (the request's instruction, else
    /// the default). Texts are put in as they are: braces in them are not placeholders.
    pub fn fill(&self, instruction: Option<&str>, query: &str, document: &str) -> FilledBody {
        let instruction = self.instruction(instruction);
        let fill = |segments: &[Segment], text: &mut String, document_at: &mut usize| {
            for segment in segments {
                if *segment == Segment::Document {
                    *document_at = text.len();
                }
                text.push_str(match segment {
                    Segment::Text(text) => text,
                    Segment::Instruction => &instruction,
                    Segment::Query => query,
                    Segment::Document => document,
                });
            }
        };
        match &self.body {
            Body::Whole(format) => {
                let (mut text, mut document_at) = (String::new(), 0);
                text.reserve(query.len() + document.len() + 128);
                fill(format, &mut text, &mut document_at);
                FilledBody::Whole { text, document_at }
            }
            Body::Pieces(pieces) => FilledBody::Pieces(
                pieces
                    .iter()
                    .map(|piece| {
                        let role = match () {
                            _ if piece.contains(&Segment::Query) => PieceRole::Query,
                            _ if piece.contains(&Segment::Document) => PieceRole::Document,
                            _ => PieceRole::Fixed,
                        };
                        let mut text = String::new();
                        fill(piece, &mut text, &mut 0);
                        (role, text)
                    })
                    .collect(),
            ),
        }
    }

    /// The one-text body of [`PromptTemplate::fill`] (for a piece-wise body, its pieces
    /// joined): what the tests read.
    #[cfg(test)]
    fn body(&self, instruction: Option<&str>, query: &str, document: &str) -> String {
        match self.fill(instruction, query, document) {
            FilledBody::Whole { text, .. } => text,
            FilledBody::Pieces(pieces) => pieces.into_iter().map(|(_, text)| text).collect(),
        }
    }

    /// The instruction as the body reads it.
    fn instruction(&self, asked: Option<&str>) -> String {
        match (&self.instruction_form, asked) {
            (Some(_), None) => String::new(),
            (Some(form), Some(asked)) => form
                .iter()
                .map(|s| match s {
                    Segment::Text(text) => text.as_str(),
                    _ => asked,
                })
                .collect(),
            (None, asked) => asked
                .or(self.default_instruction.as_deref())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

impl Body {
    fn count(&self, wanted: &Segment) -> usize {
        let count = |segments: &[Segment]| segments.iter().filter(|s| *s == wanted).count();
        match self {
            Body::Whole(format) => count(format),
            Body::Pieces(pieces) => pieces.iter().map(|p| count(p)).sum(),
        }
    }

    /// The query and the document, once each; in pieces, in two pieces of their own.
    fn check(&self) -> Result<(), String> {
        for (segment, placeholder) in [
            (Segment::Query, "{query}"),
            (Segment::Document, "{document}"),
        ] {
            let n = self.count(&segment);
            if n != 1 {
                return Err(format!(
                    "the body must hold {placeholder} once; it holds it {n} times"
                ));
            }
        }
        if let Body::Pieces(pieces) = self {
            let both =
                |p: &Vec<Segment>| p.contains(&Segment::Query) && p.contains(&Segment::Document);
            if pieces.iter().any(both) {
                return Err(
                    "{query} and {document} must be in two pieces: each is cut alone".into(),
                );
            }
        }
        Ok(())
    }
}

/// The format's literal text and placeholders; any other `{name}` is refused, and
/// `{{` and `}}` stand for braces.
fn parse_format(format: &str, field: &str) -> Result<Vec<Segment>, String> {
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
                return Err(format!(
                    "`{field}` has a `}}` that closes nothing (write `}}}}` for a brace)"
                ));
            }
            continue;
        }
        let end = rest.find('}').ok_or_else(|| {
            format!("`{field}` has a `{{` that is never closed (write `{{{{` for a brace)")
        })?;
        let segment = match &rest[1..end] {
            "instruction" => Segment::Instruction,
            "query" => Segment::Query,
            "document" => Segment::Document,
            other => {
                return Err(format!(
                    "`{field}` holds {{{other}}}: the placeholders are {{instruction}}, \
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
            format: Some(format.into()),
            ..bare()
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
        assert!(message("{query} {document} }").contains("`format` has a `}`"));
        let braces = PromptTemplate::new("t", file("{{{query}}} {document}")).unwrap();
        assert_eq!(braces.body(None, "q", "d"), "{q} d");
    }

    fn bare() -> TemplateFile {
        TemplateFile {
            prefix: String::new(),
            format: None,
            pieces: None,
            suffix: String::new(),
            default_instruction: None,
            instruction_form: None,
            answers: None,
        }
    }

    fn pieces(t: &PromptTemplate, instruction: Option<&str>) -> Vec<(PieceRole, String)> {
        match t.fill(instruction, "q", "d") {
            FilledBody::Pieces(pieces) => pieces,
            FilledBody::Whole { .. } => panic!("{} is tokenized whole", t.name),
        }
    }

    #[test]
    fn mxbai_writes_an_instruction_line_only_where_one_is_given() {
        let t = PromptTemplate::resolve("mxbai-rerank-v2").unwrap();
        assert!(t.takes_instruction() && t.in_pieces());
        let (query, document, fixed) = (PieceRole::Query, PieceRole::Document, PieceRole::Fixed);
        let without = pieces(&t, None);
        assert_eq!(without[0], (query, "query: q".to_string()));
        assert_eq!(without[1], (fixed, "\n".to_string()));
        assert_eq!(without[2], (document, "document: d".to_string()));
        assert!(without[4].1.ends_with("1 for relevant).\nRelevance:"));
        let with = pieces(&t, Some("Find code"));
        assert_eq!(with[0].1, "instruction: Find code\nquery: q");
        assert_eq!(t.answers.as_ref().unwrap().labels(), ["0", "1"]);
    }

    #[test]
    fn bge_gemma_reads_an_instruction_in_place_of_its_prompt_after_the_passage() {
        let t = PromptTemplate::resolve("bge-reranker-gemma").unwrap();
        assert_eq!(t.prefix, "<bos>");
        let default = pieces(&t, None);
        assert_eq!(default[0].1, "A: q");
        assert_eq!(default[2].1, "B: d");
        assert!(default[4].1.starts_with("Given a query A and a passage B"));
        assert_eq!(pieces(&t, Some("Is B about A?"))[4].1, "Is B about A?");
        assert_eq!(t.answers.as_ref().unwrap().labels(), ["Yes"]);
    }

    #[test]
    fn pieces_and_instruction_forms_that_cannot_work_are_refused() {
        let message = |file: TemplateFile| PromptTemplate::new("t", file).unwrap_err().to_string();
        let list = |p: &[&str]| Some(p.iter().map(|s| s.to_string()).collect());
        let joined = TemplateFile {
            pieces: list(&["{query} {document}"]),
            ..bare()
        };
        assert!(message(joined).contains("two pieces"));
        let both = TemplateFile {
            format: Some("{query} {document}".into()),
            pieces: list(&["{query}", "{document}"]),
            ..bare()
        };
        assert!(message(both).contains("one of the two"));
        let form = TemplateFile {
            pieces: list(&["{instruction}{query}", "{document}"]),
            instruction_form: Some("say {query}".into()),
            ..bare()
        };
        assert!(message(form).contains("`instruction_form` must hold {instruction}"));
        let unused = TemplateFile {
            pieces: list(&["{query}", "{document}"]),
            instruction_form: Some("{instruction}: ".into()),
            ..bare()
        };
        assert!(message(unused).contains("has no {instruction}"));
        let same = TemplateFile {
            pieces: list(&["{query}", "{document}"]),
            answers: Some(Answers {
                no: Some("y".into()),
                yes: "y".into(),
            }),
            ..bare()
        };
        assert!(message(same).contains("two different"));
    }
}

//! The checkpoint's chat template (tokenizer_config.json's `chat_template`, a Jinja template
//! as transformers renders it) rendered with minijinja, Python string methods included.

use super::error::ApiError;
use super::protocol::ChatMessage;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::{json, Value};
use std::path::Path;

/// A chat template and the special tokens it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Reads `DIR/tokenizer_config.json`; None when there is no template.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let cfg: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let source = match cfg.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => match list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            {
                Some(t) => t
                    .get("template")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                None => return Ok(None),
            },
            _ => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
                Ok(s) => s,
                Err(_) => return Ok(None),
            },
        };
        Self::new(
            &source,
            token_text(cfg.get("bos_token")),
            token_text(cfg.get("eos_token")),
        )
        .map(Some)
        .map_err(|e| format!("{}: chat_template: {e}", path.display()))
    }

    /// A template from its source.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, JinjaError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // Templates are written for Python's Jinja, which keeps a trailing newline when asked;
        // transformers sets trim_blocks and lstrip_blocks.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.add_template_owned("chat".to_string(), source.to_string())?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt text of a conversation, with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut v = json!({"role": m.role, "content": content_text(&m.content)?});
                if let Some(name) = &m.name {
                    v["name"] = json!(name);
                }
                Ok(v)
            })
            .collect::<Result<_, ApiError>>()?;
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ApiError::internal(format!("chat template: {e}")))?;
        let ctx = json!({
            "messages": msgs,
            "add_generation_prompt": true,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        tmpl.render(minijinja::value::Serde(ctx)).map_err(|e| {
            ApiError::invalid(
                format!("The chat template could not render these messages: {e}."),
                Some("messages"),
            )
        })
    }
}

/// A message's content as text: a string, or the text parts of a list joined.
fn content_text(c: &Option<Value>) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            "A message's `content` must be a string or a list of text parts.",
            Some("messages"),
        )
    };
    match c {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text") | None, Some(t)) => Ok(t.to_string()),
                    _ => Err(bad()),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
        Some(_) => Err(bad()),
    }
}

/// Roles a chat message may have.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

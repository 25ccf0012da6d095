//! `crossenc config show`: the effective configuration as TOML, each value with where it
//! came from.

use figment::value::Value;

use crate::load::Loaded;

/// The configuration in TOML, a `# source` comment after every value.
pub fn render(loaded: &Loaded) -> String {
    let tree = Value::serialize(&loaded.config).expect("the configuration serializes");
    let mut out = String::new();
    let Value::Dict(_, sections) = tree else {
        return out;
    };
    for (section, table) in sections {
        let Value::Dict(_, keys) = table else {
            continue;
        };
        out.push_str(&format!("[{section}]\n"));
        for (key, value) in keys {
            let line = format!("{key} = {}", literal(&value));
            let source = loaded.source(&format!("{section}.{key}"));
            out.push_str(&format!("{line:<48} # {source}\n"));
        }
        out.push('\n');
    }
    out
}

fn literal(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Value::Char(_, c) => format!("\"{c}\""),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
            (Some(n), _, _) => n.to_string(),
            (None, Some(n), _) => n.to_string(),
            (None, None, Some(x)) => x.to_string(),
            (None, None, None) => "nan".into(),
        },
        Value::Empty(..) => "\"\"".into(),
        Value::Array(_, items) => {
            let items: Vec<_> = items.iter().map(literal).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Dict(..) => "{ ... }".into(),
    }
}

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
        match table {
            Value::Dict(_, keys) => {
                out.push_str(&format!("[{section}]\n"));
                push_keys(&mut out, keys, |key| {
                    loaded.source(&format!("{section}.{key}"))
                });
            }
            // `[[models]]`: one table each, all from where the list came from.
            Value::Array(_, tables) => {
                for table in tables {
                    let Value::Dict(_, keys) = table else {
                        continue;
                    };
                    out.push_str(&format!("[[{section}]]\n"));
                    push_keys(&mut out, keys, |_| loaded.source(&section));
                }
            }
            _ => {}
        }
    }
    out
}

fn push_keys(
    out: &mut String,
    keys: impl IntoIterator<Item = (String, Value)>,
    source: impl Fn(&str) -> crate::Source,
) {
    for (key, value) in keys {
        let line = format!("{key} = {}", literal(&value));
        out.push_str(&format!("{line:<48} # {}\n", source(&key)));
    }
    out.push('\n');
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
        Value::Dict(_, keys) => {
            let keys: Vec<_> = keys
                .iter()
                .map(|(k, v)| format!("{k} = {}", literal(v)))
                .collect();
            format!("{{ {} }}", keys.join(", "))
        }
    }
}

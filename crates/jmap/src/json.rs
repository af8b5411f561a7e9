//! Strict JSON for untrusted request bodies, and JSON Pointer evaluation
//! for result references.
//!
//! [`parse`] accepts I-JSON only (RFC 7493): UTF-8, no duplicate member
//! names, and at most [`MAX_DEPTH`] nested arrays/objects, so a hostile
//! body costs memory proportional to its (bounded) size and no stack
//! overflow.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;
/// Most values (scalars, arrays, objects, member names) in one document:
/// bounds the memory a small hostile body (`[0,0,0,...]`) expands to.
pub const MAX_VALUES: usize = 1_000_000;

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `bytes` as I-JSON: duplicate keys and nesting deeper than
/// [`MAX_DEPTH`] are errors.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let budget = Cell::new(MAX_VALUES);
    let value = Strict {
        depth: 0,
        budget: &budget,
    }
    .deserialize(&mut de)
    .map_err(|e| JsonError(e.to_string()))?;
    de.end().map_err(|e| JsonError(e.to_string()))?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct Strict<'b> {
    depth: usize,
    budget: &'b Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let left = self.budget.get();
        if left == 0 {
            return Err(de::Error::custom(format!("more than {MAX_VALUES} values")));
        }
        self.budget.set(left - 1);
        d.deserialize_any(self)
    }
}

impl<'b> Strict<'b> {
    fn nested<E: de::Error>(self) -> Result<Strict<'b>, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Strict {
            depth: self.depth + 1,
            budget: self.budget,
        })
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate member name {key:?}")));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Why a result reference path did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerError(pub String);

/// Evaluates a JSON Pointer (RFC 6901) with JMAP's `*` extension (RFC 8620
/// section 3.7): `*` on an array maps the rest of the path over every item,
/// flattening items that are themselves arrays.
pub fn evaluate_pointer(root: &Value, path: &str) -> Result<Value, PointerError> {
    if path.is_empty() {
        return Ok(root.clone());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PointerError(format!("path {path:?} does not start with /")));
    };
    let tokens: Vec<String> = rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    walk(root, &tokens)
}

fn walk(value: &Value, tokens: &[String]) -> Result<Value, PointerError> {
    let Some((token, rest)) = tokens.split_first() else {
        return Ok(value.clone());
    };
    match value {
        Value::Object(map) => match map.get(token) {
            Some(v) => walk(v, rest),
            None => Err(PointerError(format!("no member {token:?}"))),
        },
        Value::Array(items) if token == "*" => {
            let mut out = Vec::new();
            for item in items {
                match walk(item, rest)? {
                    Value::Array(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            Ok(Value::Array(out))
        }
        Value::Array(items) => {
            let valid = !token.is_empty()
                && token.bytes().all(|b| b.is_ascii_digit())
                && (token == "0" || !token.starts_with('0'));
            let index: Option<usize> = if valid { token.parse().ok() } else { None };
            match index.and_then(|i| items.get(i)) {
                Some(v) => walk(v, rest),
                None => Err(PointerError(format!("no array item {token:?}"))),
            }
        }
        _ => Err(PointerError(format!(
            "cannot apply {token:?} to a scalar value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_duplicates_and_deep_nesting() {
        assert!(parse(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert_eq!(
            parse(br#"{"a":[1,{"b":null}]}"#).unwrap(),
            json!({"a":[1,{"b":null}]})
        );
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        assert!(parse(b"{} x").is_err());
        assert!(parse(b"\xff").is_err());
        let many = format!("[{}0]", "0,".repeat(MAX_VALUES));
        assert!(parse(many.as_bytes()).is_err());
        let fine = format!("[{}0]", "0,".repeat(1000));
        assert!(parse(fine.as_bytes()).is_ok());
    }

    #[test]
    fn pointer_maps_star_and_flattens() {
        let v =
            json!({"list": [{"ids": ["a", "b"], "x": 1}, {"ids": ["c"], "x": 2}], "a/b": {"~": 3}});
        assert_eq!(
            evaluate_pointer(&v, "/list/*/ids").unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(evaluate_pointer(&v, "/list/*/x").unwrap(), json!([1, 2]));
        assert_eq!(evaluate_pointer(&v, "/list/1/x").unwrap(), json!(2));
        assert_eq!(evaluate_pointer(&v, "/a~1b/~0").unwrap(), json!(3));
        assert!(evaluate_pointer(&v, "/list/01").is_err());
        assert!(evaluate_pointer(&v, "/nope").is_err());
        assert!(evaluate_pointer(&v, "list").is_err());
    }
}

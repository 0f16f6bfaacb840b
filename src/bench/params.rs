//! `--param JSON`: a `poolplane.v1.Value` written in protobuf's JSON form
//! (as grpcurl takes it: `{"intValue":"41"}`, `{"textValue":"x"}`,
//! `{"null":null}`), read by hand for every kind the API has. Field names
//! may be lowerCamelCase or the proto's snake_case, as protobuf JSON allows.

use serde_json::{Map, Value as Json};

use crate::proto::{value::Kind, Array, Interval, NullValue, Value};

/// Parses one parameter; the error says what was wrong, for the user.
pub(crate) fn value_from_json(text: &str) -> Result<Value, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    value(&json)
}

const KINDS: &str = "null, boolValue, intValue, floatValue, numericValue, textValue, bytesValue, \
     uuidValue, dateValue, timeValue, timestampValue, timestamptzValue, intervalValue, jsonValue, \
     arrayValue";

fn value(json: &Json) -> Result<Value, String> {
    let object = json.as_object().ok_or_else(|| {
        format!("a Value is an object with one field ({KINDS}), e.g. {{\"intValue\":\"41\"}}")
    })?;
    let mut fields = object.iter();
    let (name, field) = match (fields.next(), fields.next()) {
        (Some(only), None) => only,
        _ => {
            return Err(format!(
                "a Value has exactly one field, one of {KINDS} (got {})",
                object.len()
            ))
        }
    };
    let kind = match camel(name).as_str() {
        "null" => match field {
            Json::Null => Kind::Null(NullValue::NullValue as i32),
            Json::String(s) if s == "NULL_VALUE" => Kind::Null(NullValue::NullValue as i32),
            _ => return Err("null takes null".into()),
        },
        "boolValue" => Kind::BoolValue(field.as_bool().ok_or("boolValue takes true or false")?),
        "intValue" => Kind::IntValue(int64("intValue", field)?),
        "floatValue" => Kind::FloatValue(float(field)?),
        "numericValue" => Kind::NumericValue(string(name, field)?),
        "textValue" => Kind::TextValue(string(name, field)?),
        "bytesValue" => Kind::BytesValue(
            base64(&string(name, field)?)
                .ok_or("bytesValue takes base64 (as protobuf JSON does)")?,
        ),
        "uuidValue" => Kind::UuidValue(string(name, field)?),
        "dateValue" => Kind::DateValue(string(name, field)?),
        "timeValue" => Kind::TimeValue(string(name, field)?),
        "timestampValue" => Kind::TimestampValue(string(name, field)?),
        "jsonValue" => Kind::JsonValue(string(name, field)?),
        "timestamptzValue" => {
            let text = string(name, field)?;
            let instant = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| {
                format!("timestamptzValue takes RFC 3339, e.g. \"2024-05-01T12:00:00Z\" ({e})")
            })?;
            Kind::TimestamptzValue(prost_types::Timestamp {
                seconds: instant.timestamp(),
                nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
            })
        }
        "intervalValue" => {
            let parts = object_of(name, field)?;
            Kind::IntervalValue(Interval {
                months: int32("months", parts)?,
                days: int32("days", parts)?,
                microseconds: match member(parts, "microseconds") {
                    Some(v) => int64("microseconds", v)?,
                    None => 0,
                },
            })
        }
        "arrayValue" => {
            let parts = object_of(name, field)?;
            let elements = match member(parts, "elements") {
                None => Vec::new(),
                Some(Json::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| value(item).map_err(|why| format!("elements[{i}]: {why}")))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("arrayValue.elements takes a list of Values".into()),
            };
            Kind::ArrayValue(Array { elements })
        }
        _ => return Err(format!("unknown field `{name}`: one of {KINDS}")),
    };
    Ok(Value { kind: Some(kind) })
}

/// `int_value` → `intValue`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn member<'a>(object: &'a Map<String, Json>, name: &str) -> Option<&'a Json> {
    object.get(name)
}

fn object_of<'a>(name: &str, field: &'a Json) -> Result<&'a Map<String, Json>, String> {
    field
        .as_object()
        .ok_or_else(|| format!("{name} takes an object"))
}

fn string(name: &str, field: &Json) -> Result<String, String> {
    field
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{name} takes a string"))
}

/// A 64-bit integer: a JSON string (protobuf's form) or a whole number.
fn int64(name: &str, field: &Json) -> Result<i64, String> {
    let parsed = match field {
        Json::String(s) => s.trim().parse().ok(),
        Json::Number(n) => n.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{name} takes a 64-bit integer, e.g. \"41\""))
}

fn int32(name: &str, object: &Map<String, Json>) -> Result<i32, String> {
    match member(object, name) {
        None => Ok(0),
        Some(Json::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("{name} takes a 32-bit integer")),
        Some(_) => Err(format!("{name} takes a 32-bit integer")),
    }
}

fn float(field: &Json) -> Result<f64, String> {
    match field {
        Json::Number(n) => n.as_f64().ok_or_else(|| "floatValue takes a number".into()),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other.parse().map_err(|_| {
                "floatValue takes a number, \"NaN\", \"Infinity\" or \"-Infinity\"".into()
            }),
        },
        _ => Err("floatValue takes a number".into()),
    }
}

/// Standard or URL-safe base64, padding optional (protobuf JSON accepts both).
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Six leftover bits cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Kind {
        value_from_json(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .kind
            .unwrap_or_else(|| panic!("{text}: no kind"))
    }

    #[test]
    fn every_kind() {
        assert_eq!(kind(r#"{"intValue":"41"}"#), Kind::IntValue(41));
        assert_eq!(kind(r#"{"int_value":-7}"#), Kind::IntValue(-7));
        assert_eq!(kind(r#"{"boolValue":true}"#), Kind::BoolValue(true));
        assert_eq!(kind(r#"{"null":null}"#), Kind::Null(0));
        assert_eq!(kind(r#"{"floatValue":1.5}"#), Kind::FloatValue(1.5));
        assert_eq!(
            kind(r#"{"floatValue":"-Infinity"}"#),
            Kind::FloatValue(f64::NEG_INFINITY)
        );
        assert_eq!(kind(r#"{"textValue":"x"}"#), Kind::TextValue("x".into()));
        assert_eq!(
            kind(r#"{"bytesValue":"aGVsbG8="}"#),
            Kind::BytesValue(b"hello".to_vec())
        );
        assert_eq!(
            kind(r#"{"timestamptzValue":"1970-01-01T00:00:01.5Z"}"#),
            Kind::TimestamptzValue(prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            kind(r#"{"intervalValue":{"days":2,"microseconds":"5"}}"#),
            Kind::IntervalValue(Interval {
                months: 0,
                days: 2,
                microseconds: 5
            })
        );
        assert_eq!(
            kind(r#"{"arrayValue":{"elements":[{"intValue":"1"},{"null":null}]}}"#),
            Kind::ArrayValue(Array {
                elements: vec![
                    Value {
                        kind: Some(Kind::IntValue(1))
                    },
                    Value {
                        kind: Some(Kind::Null(0))
                    }
                ]
            })
        );
    }

    #[test]
    fn bad_input_is_explained() {
        for (text, says) in [
            ("41", "object with one field"),
            ("{}", "exactly one field"),
            (r#"{"intValue":"x"}"#, "64-bit integer"),
            (r#"{"intValue":"1","textValue":"a"}"#, "exactly one field"),
            (r#"{"bogus":1}"#, "unknown field `bogus`"),
            (r#"{"bytesValue":"!!"}"#, "base64"),
            (r#"{"timestamptzValue":"yesterday"}"#, "RFC 3339"),
            ("{", "not JSON"),
            (r#"{"arrayValue":{"elements":[{"x":1}]}}"#, "elements[0]"),
        ] {
            let err = value_from_json(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}

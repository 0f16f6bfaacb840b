//! What the fuzz targets in `fuzz/` run, and their regression inputs
//! (`tests/fuzz-regressions/<target>/`, replayed by this module's tests).
//! Not an API: nothing else should call these. The checks panic on purpose:
//! a panic is how a fuzzer learns that an input broke a property.

use bytes::BytesMut;
use prost::Message;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::proto;
use crate::query::SqlValue;

/// A result value as the API sends it (`api::convert::value_to_proto`).
pub fn value_to_proto(value: SqlValue) -> proto::Value {
    crate::api::value_to_proto(value)
}

/// Request parameters as the API reads them (`api::convert::values_from_proto`);
/// the error is the `INVALID_ARGUMENT` status's message.
pub fn values_from_proto(values: Vec<proto::Value>) -> Result<Vec<SqlValue>, String> {
    crate::api::values_from_proto("params", values).map_err(|status| status.message().to_string())
}

/// A parameter encoded for a placeholder of type `ty` as it would go on the
/// wire: `Ok(None)` for NULL.
pub fn encode_param(value: &SqlValue, ty: &Type) -> Result<Option<Vec<u8>>, String> {
    let param = crate::query::encode_param(value, ty)?;
    let mut out = BytesMut::new();
    match param.to_sql(ty, &mut out) {
        Ok(IsNull::No) => Ok(Some(out.to_vec())),
        Ok(IsNull::Yes) => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// Target `config`: any text loads or is refused with errors; never panics.
/// (How long it may take is the fuzzer's `-timeout`, and the tests'.)
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match crate::config::Config::parse(text, "fuzz") {
            Ok(config) => drop(format!("{config:?}")),
            Err(errors) => drop(errors.to_string()),
        }
    }
}

/// Target `value_decode`: the first byte picks a supported type, the rest is
/// a PostgreSQL binary value of it. Decoding (what a result row does) and
/// converting to protobuf (what the API sends) never panic; and a value that
/// the API takes back as a parameter of the same type decodes to itself.
pub fn value_decode(data: &[u8]) {
    let Some((&selector, raw)) = data.split_first() else {
        return;
    };
    let ty = pick_type(selector);
    let Ok(value) = decode(&ty, Some(raw)) else {
        return;
    };
    let _ = value.response_bytes();
    let param = match values_from_proto(vec![value_to_proto(value.clone())]) {
        Ok(mut params) if params.len() == 1 => params.remove(0),
        other => {
            panic!("{value:?} from {ty} went out as protobuf the API does not take back: {other:?}")
        }
    };
    // timestamptz beyond protobuf's years goes out as text, which a
    // timestamptz parameter refuses (documented): no round trip to check.
    if let Ok(encoded) = encode_param(&param, &ty) {
        match decode(&ty, encoded.as_deref()) {
            Ok(again) => assert!(
                same(&again, &value),
                "{ty}: {raw:?} decoded to {value:?}, sent back as {encoded:?}, decoded to {again:?}"
            ),
            Err(err) => panic!("{ty}: {value:?} encoded as {encoded:?} does not decode: {err}"),
        }
    }
}

/// Target `value_encode`: the first byte picks a supported type, the rest is
/// a protobuf `poolplane.v1.Value` (a request parameter). Reading and
/// encoding it never panic; what encodes decodes, and encodes again to the
/// same bytes.
pub fn value_encode(data: &[u8]) {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let ty = pick_type(selector);
    let Ok(value) = proto::Value::decode(message) else {
        return;
    };
    let Ok(params) = values_from_proto(vec![value]) else {
        return;
    };
    let Some(param) = params.first() else {
        panic!("one protobuf value read as no parameter");
    };
    let Ok(encoded) = encode_param(param, &ty) else {
        return;
    };
    let decoded = decode(&ty, encoded.as_deref()).unwrap_or_else(|err| {
        panic!("{ty}: {param:?} encoded as {encoded:?} does not decode: {err}")
    });
    match encode_param(&decoded, &ty) {
        Ok(again) => assert_eq!(again, encoded, "{ty}: {param:?} came back {decoded:?}"),
        Err(err) => {
            panic!("{ty}: {param:?} -> {encoded:?} -> {decoded:?} does not encode again: {err}")
        }
    }
}

type DecodeError = Box<dyn std::error::Error + Sync + Send>;

fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<SqlValue, DecodeError> {
    match raw {
        Some(raw) => <SqlValue as FromSql>::from_sql(ty, raw),
        None => <SqlValue as FromSql>::from_sql_null(ty),
    }
}

/// One of the supported types (arrays included), by `selector`.
fn pick_type(selector: u8) -> Type {
    let arrays = [
        Type::BOOL_ARRAY,
        Type::INT2_ARRAY,
        Type::INT4_ARRAY,
        Type::INT8_ARRAY,
        Type::OID_ARRAY,
        Type::FLOAT4_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::NUMERIC_ARRAY,
        Type::TEXT_ARRAY,
        Type::VARCHAR_ARRAY,
        Type::BPCHAR_ARRAY,
        Type::NAME_ARRAY,
        Type::BYTEA_ARRAY,
        Type::UUID_ARRAY,
        Type::DATE_ARRAY,
        Type::TIME_ARRAY,
        Type::TIMESTAMP_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::INTERVAL_ARRAY,
        Type::JSON_ARRAY,
        Type::JSONB_ARRAY,
    ];
    let supported: Vec<Type> = crate::query::SUPPORTED_SCALARS
        .iter()
        .cloned()
        .chain(arrays)
        .filter(crate::query::is_supported)
        .collect();
    supported
        .get(usize::from(selector) % supported.len().max(1))
        .cloned()
        .unwrap_or(Type::TEXT)
}

/// Equality that takes NaN for NaN (a float's only non-reflexive value).
fn same(a: &SqlValue, b: &SqlValue) -> bool {
    match (a, b) {
        (SqlValue::Float(x), SqlValue::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        (SqlValue::Array(xs), SqlValue::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// The inputs kept for `target`, with their names.
    fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-regressions")
            .join(target);
        let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                let path = entry.expect("directory entry").path();
                let bytes = std::fs::read(&path).expect("regression input");
                (path.display().to_string(), bytes)
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
        inputs
    }

    #[test]
    fn config_regressions_load_or_are_refused_quickly() {
        for (name, input) in regressions("config") {
            let started = Instant::now();
            super::config(&input);
            // Only a hang fails here (fuzzing itself flags units over 1 s).
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} took {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn value_decode_regressions_hold() {
        for (_, input) in regressions("value_decode") {
            super::value_decode(&input);
        }
    }

    #[test]
    fn value_encode_regressions_hold() {
        for (_, input) in regressions("value_encode") {
            super::value_encode(&input);
        }
    }
}

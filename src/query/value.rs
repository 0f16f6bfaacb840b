//! SQL values crossing the API: [`SqlValue`], and its conversion to and
//! from PostgreSQL's binary wire format for the supported types.
//!
//! Parameters are encoded against the type PostgreSQL inferred for each
//! placeholder, so a mismatch is reported per parameter before anything
//! runs; results are decoded by column type. Anything outside the supported
//! set is refused with a hint to cast to text.

use std::error::Error;

use bytes::BytesMut;
use chrono::{Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime};
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, Kind, ToSql, Type};

use super::numeric;

/// A value of one of the supported PostgreSQL types, or NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8.
    Float(f64),
    /// numeric, as exact decimal text.
    Numeric(String),
    /// text, varchar, bpchar, name.
    Text(String),
    Bytes(Vec<u8>),
    Uuid(String),
    /// `YYYY-MM-DD`, `infinity` or `-infinity`.
    Date(String),
    /// `HH:MM:SS[.ffffff]`.
    Time(String),
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]`, `infinity` or `-infinity`.
    Timestamp(String),
    Timestamptz(Instant),
    Interval(Interval),
    /// json or jsonb, as text.
    Json(String),
    /// A one-dimensional array.
    Array(Vec<SqlValue>),
}

/// What one value costs in memory on its way to the caller besides its
/// payload: this enum and the protobuf value it becomes (about 48 and 32
/// bytes), and its framing. A NULL is 4 bytes from PostgreSQL and about 96
/// here, so results are bounded by what they cost, not what they weigh.
pub(crate) const VALUE_OVERHEAD: usize = 96;

impl SqlValue {
    /// What the value costs in memory until it is sent: its payload plus
    /// [`VALUE_OVERHEAD`] (for each element, in an array).
    pub fn memory_bytes(&self) -> usize {
        match self {
            SqlValue::Array(elements) => {
                VALUE_OVERHEAD + elements.iter().map(SqlValue::memory_bytes).sum::<usize>()
            }
            other => VALUE_OVERHEAD + other.response_bytes(),
        }
    }

    /// About how many bytes the value takes in a response: its payload plus
    /// a few bytes of protobuf framing. What the result byte limit counts.
    pub fn response_bytes(&self) -> usize {
        /// Tag, length and wrapper of one value.
        const FRAMING: usize = 6;
        FRAMING
            + match self {
                SqlValue::Null | SqlValue::Bool(_) => 1,
                SqlValue::Int(_) | SqlValue::Float(_) => 10,
                SqlValue::Timestamptz(_) | SqlValue::Interval(_) => 24,
                SqlValue::Numeric(text)
                | SqlValue::Text(text)
                | SqlValue::Uuid(text)
                | SqlValue::Date(text)
                | SqlValue::Time(text)
                | SqlValue::Timestamp(text)
                | SqlValue::Json(text) => text.len(),
                SqlValue::Bytes(bytes) => bytes.len(),
                SqlValue::Array(elements) => elements.iter().map(SqlValue::response_bytes).sum(),
            }
    }
}

/// A timestamptz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instant {
    /// Microseconds since 1970-01-01T00:00:00Z.
    /// (Wider than i64: PostgreSQL's range, to 294276 AD, does not fit
    /// 64 bits counted from 1970.)
    UnixMicros(i128),
    Infinity,
    NegInfinity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub microseconds: i64,
}

impl SqlValue {
    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Bool(_) => "bool",
            SqlValue::Int(_) => "int",
            SqlValue::Float(_) => "float",
            SqlValue::Numeric(_) => "numeric",
            SqlValue::Text(_) => "text",
            SqlValue::Bytes(_) => "bytes",
            SqlValue::Uuid(_) => "uuid",
            SqlValue::Date(_) => "date",
            SqlValue::Time(_) => "time",
            SqlValue::Timestamp(_) => "timestamp",
            SqlValue::Timestamptz(_) => "timestamptz",
            SqlValue::Interval(_) => "interval",
            SqlValue::Json(_) => "json",
            SqlValue::Array(_) => "array",
        }
    }
}

/// PostgreSQL's epoch (2000-01-01) in microseconds after the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// PostgreSQL's timestamp range, in microseconds since its epoch: from
/// 4714-11-24 00:00 BC (Julian day 0) to before 294277-01-01 (its
/// `MIN_TIMESTAMP` and `END_TIMESTAMP`). Outside it, a value would be
/// silently clamped or taken for ±infinity.
const PG_TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const PG_TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
const DATE_FORMAT: &str = "%Y-%m-%d";
const TIME_FORMAT: &str = "%H:%M:%S%.f";
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

/// Whether results of this type can be returned.
pub fn is_supported(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(member) => is_supported_scalar(member),
        _ => is_supported_scalar(ty),
    }
}

/// The scalar types poolplane converts (and one-dimensional arrays of them).
pub(crate) const SUPPORTED_SCALARS: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::OID,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::TEXT,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::NAME,
    Type::UNKNOWN,
    Type::BYTEA,
    Type::UUID,
    Type::DATE,
    Type::TIME,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::INTERVAL,
    Type::JSON,
    Type::JSONB,
    Type::VOID,
];

fn is_supported_scalar(ty: &Type) -> bool {
    SUPPORTED_SCALARS.contains(ty)
}

type BoxError = Box<dyn Error + Sync + Send>;

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<SqlValue, BoxError> {
        if let Kind::Array(member) = ty.kind() {
            return decode_array(member, raw);
        }
        decode_scalar(ty, raw)
    }

    fn from_sql_null(_: &Type) -> Result<SqlValue, BoxError> {
        Ok(SqlValue::Null)
    }

    fn accepts(ty: &Type) -> bool {
        is_supported(ty)
    }
}

fn decode_array(member: &Type, raw: &[u8]) -> Result<SqlValue, BoxError> {
    let array = wire::array_from_sql(raw)?;
    let dimensions: Vec<wire::ArrayDimension> = array.dimensions().collect()?;
    if dimensions.len() > 1 {
        return Err(
            "multi-dimensional arrays are not supported: unnest them or cast to text".into(),
        );
    }
    // A list has no lower bound: `'[0:1]={1,2}'` is not `{1,2}` to PostgreSQL.
    if let Some(bound) = dimensions
        .first()
        .map(|d| d.lower_bound)
        .filter(|&b| b != 1)
    {
        return Err(format!(
            "the array starts at index {bound}, and a list cannot say so: cast it to text, or renumber it from 1 (e.g. array(SELECT unnest(...)))"
        )
        .into());
    }
    // Grown as elements arrive, not sized from the header's count: a
    // header may claim a hundred million elements in fifty bytes (found by
    // fuzzing: collecting reserved gigabytes up front).
    let mut elements = Vec::new();
    let mut values = array.values();
    while let Some(element) = values.next()? {
        elements.push(match element {
            None => SqlValue::Null,
            Some(bytes) => decode_scalar(member, bytes)?,
        });
    }
    Ok(SqlValue::Array(elements))
}

fn decode_scalar(ty: &Type, raw: &[u8]) -> Result<SqlValue, BoxError> {
    Ok(match *ty {
        // `SELECT pg_sleep(1)` and other procedures-as-functions return void.
        Type::VOID => SqlValue::Null,
        Type::BOOL => SqlValue::Bool(wire::bool_from_sql(raw)?),
        Type::INT2 => SqlValue::Int(i64::from(wire::int2_from_sql(raw)?)),
        Type::INT4 => SqlValue::Int(i64::from(wire::int4_from_sql(raw)?)),
        Type::INT8 => SqlValue::Int(wire::int8_from_sql(raw)?),
        Type::OID => SqlValue::Int(i64::from(wire::oid_from_sql(raw)?)),
        Type::FLOAT4 => SqlValue::Float(f64::from(wire::float4_from_sql(raw)?)),
        Type::FLOAT8 => SqlValue::Float(wire::float8_from_sql(raw)?),
        Type::NUMERIC => SqlValue::Numeric(numeric::decode(raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            SqlValue::Text(wire::text_from_sql(raw)?.to_string())
        }
        Type::BYTEA => SqlValue::Bytes(wire::bytea_from_sql(raw).to_vec()),
        Type::UUID => SqlValue::Uuid(uuid::Uuid::from_bytes(wire::uuid_from_sql(raw)?).to_string()),
        Type::DATE => SqlValue::Date(format_date(wire::date_from_sql(raw)?)?),
        Type::TIME => SqlValue::Time(format_time(wire::time_from_sql(raw)?)?),
        Type::TIMESTAMP => SqlValue::Timestamp(format_timestamp(wire::timestamp_from_sql(raw)?)?),
        Type::TIMESTAMPTZ => SqlValue::Timestamptz(instant_from_pg(wire::timestamp_from_sql(raw)?)),
        Type::INTERVAL => SqlValue::Interval(decode_interval(raw)?),
        Type::JSON => SqlValue::Json(wire::text_from_sql(raw)?.to_string()),
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => SqlValue::Json(std::str::from_utf8(text)?.to_string()),
            _ => return Err("unsupported jsonb format version".into()),
        },
        _ => return Err(format!("type {} is not supported", ty.name()).into()),
    })
}

fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

fn format_date(days: i32) -> Result<String, BoxError> {
    match days {
        i32::MAX => Ok("infinity".into()),
        i32::MIN => Ok("-infinity".into()),
        _ => pg_epoch()
            .date()
            .checked_add_signed(ChronoDuration::days(i64::from(days)))
            .map(|date| date.format(DATE_FORMAT).to_string())
            .ok_or_else(|| "date out of the supported range; cast it to text".into()),
    }
}

fn format_time(micros: i64) -> Result<String, BoxError> {
    // PostgreSQL allows 24:00:00, which chrono cannot represent.
    if micros == 86_400_000_000 {
        return Ok("24:00:00".into());
    }
    let seconds = u32::try_from(micros.div_euclid(1_000_000))?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000)?;
    NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos)
        .map(|time| time.format(TIME_FORMAT).to_string())
        .ok_or_else(|| "time out of range".into())
}

fn format_timestamp(micros: i64) -> Result<String, BoxError> {
    match micros {
        i64::MAX => Ok("infinity".into()),
        i64::MIN => Ok("-infinity".into()),
        _ => pg_epoch()
            .checked_add_signed(ChronoDuration::microseconds(micros))
            .map(|ts| ts.format(TIMESTAMP_FORMAT).to_string())
            .ok_or_else(|| "timestamp out of the supported range; cast it to text".into()),
    }
}

fn instant_from_pg(micros: i64) -> Instant {
    match micros {
        i64::MAX => Instant::Infinity,
        i64::MIN => Instant::NegInfinity,
        _ => Instant::UnixMicros(i128::from(micros) + i128::from(PG_EPOCH_UNIX_MICROS)),
    }
}

fn decode_interval(raw: &[u8]) -> Result<Interval, BoxError> {
    if raw.len() != 16 {
        return Err("interval value has the wrong length".into());
    }
    let mut micros = [0u8; 8];
    micros.copy_from_slice(&raw[0..8]);
    let mut days = [0u8; 4];
    days.copy_from_slice(&raw[8..12]);
    let mut months = [0u8; 4];
    months.copy_from_slice(&raw[12..16]);
    Ok(Interval {
        microseconds: i64::from_be_bytes(micros),
        days: i32::from_be_bytes(days),
        months: i32::from_be_bytes(months),
    })
}

/// A parameter already encoded for its placeholder's type. Encoding ahead
/// of time lets a bad parameter be reported as such, by position, instead
/// of as a generic driver error halfway through a call.
#[derive(Debug)]
pub(crate) struct EncodedParam(Option<Vec<u8>>);

impl ToSql for EncodedParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Encodes `value` for a placeholder of type `ty`, or says why it cannot.
pub(crate) fn encode_param(value: &SqlValue, ty: &Type) -> Result<EncodedParam, String> {
    if let SqlValue::Null = value {
        return Ok(EncodedParam(None));
    }
    let mut out = Vec::new();
    match ty.kind() {
        Kind::Array(member) => encode_array(value, ty, member, &mut out)?,
        _ => encode_scalar(value, ty, &mut out)?,
    }
    Ok(EncodedParam(Some(out)))
}

fn encode_array(
    value: &SqlValue,
    ty: &Type,
    member: &Type,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let SqlValue::Array(elements) = value else {
        return Err(mismatch(value, ty));
    };
    let len = i32::try_from(elements.len()).map_err(|_| "array too long".to_string())?;
    // PostgreSQL writes an empty array with no dimensions at all.
    let dimensions = (len > 0).then_some(wire::ArrayDimension {
        len,
        lower_bound: 1,
    });
    let mut buf = BytesMut::new();
    wire::array_to_sql(
        dimensions,
        member.oid(),
        elements.iter(),
        |element, buf| match element {
            SqlValue::Null => Ok(postgres_protocol::IsNull::Yes),
            SqlValue::Array(_) => Err("nested arrays are not supported".into()),
            element => {
                let mut bytes = Vec::new();
                encode_scalar(element, member, &mut bytes)?;
                buf.extend_from_slice(&bytes);
                Ok(postgres_protocol::IsNull::No)
            }
        },
        &mut buf,
    )
    .map_err(|err| err.to_string())?;
    out.extend_from_slice(&buf);
    Ok(())
}

fn encode_scalar(value: &SqlValue, ty: &Type, out: &mut Vec<u8>) -> Result<(), String> {
    match (ty, value) {
        (&Type::BOOL, SqlValue::Bool(v)) => out.push(u8::from(*v)),
        (&Type::INT2, SqlValue::Int(v)) => out.extend_from_slice(&narrow::<i16>(*v, ty)?.to_be_bytes()),
        (&Type::INT4, SqlValue::Int(v)) => out.extend_from_slice(&narrow::<i32>(*v, ty)?.to_be_bytes()),
        (&Type::INT8, SqlValue::Int(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (&Type::OID, SqlValue::Int(v)) => out.extend_from_slice(&narrow::<u32>(*v, ty)?.to_be_bytes()),
        // Rounded to float4's precision, as PostgreSQL rounds; out of its
        // range is an error, as in PostgreSQL.
        (&Type::FLOAT4, SqlValue::Float(v)) => out.extend_from_slice(&float4(*v)?.to_be_bytes()),
        (&Type::FLOAT4, SqlValue::Int(v)) => out.extend_from_slice(&(*v as f32).to_be_bytes()),
        (&Type::FLOAT8, SqlValue::Float(v)) => out.extend_from_slice(&v.to_be_bytes()),
        (&Type::FLOAT8, SqlValue::Int(v)) => out.extend_from_slice(&(*v as f64).to_be_bytes()),
        (&Type::NUMERIC, SqlValue::Numeric(text)) => numeric::encode(text, out)?,
        (&Type::NUMERIC, SqlValue::Int(v)) => numeric::encode(&v.to_string(), out)?,
        (&Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN, SqlValue::Text(text)) => {
            out.extend_from_slice(text.as_bytes())
        }
        (&Type::BYTEA, SqlValue::Bytes(bytes)) => out.extend_from_slice(bytes),
        (&Type::UUID, SqlValue::Uuid(text)) => {
            let uuid = uuid::Uuid::parse_str(text).map_err(|err| format!("`{text}` is not a UUID: {err}"))?;
            out.extend_from_slice(uuid.as_bytes());
        }
        (&Type::DATE, SqlValue::Date(text)) => out.extend_from_slice(&parse_date(text)?.to_be_bytes()),
        (&Type::TIME, SqlValue::Time(text)) => out.extend_from_slice(&parse_time(text)?.to_be_bytes()),
        (&Type::TIMESTAMP, SqlValue::Timestamp(text)) => {
            out.extend_from_slice(&parse_timestamp(text)?.to_be_bytes())
        }
        (&Type::TIMESTAMPTZ, SqlValue::Timestamptz(instant)) => {
            let micros = match instant {
                Instant::Infinity => i64::MAX,
                Instant::NegInfinity => i64::MIN,
                Instant::UnixMicros(us) => i64::try_from(us - i128::from(PG_EPOCH_UNIX_MICROS))
                    .ok()
                    .filter(|pg| (PG_TIMESTAMP_MIN..PG_TIMESTAMP_END).contains(pg))
                    .ok_or_else(|| {
                        "the instant is outside PostgreSQL's timestamptz range (4713 BC to 294276 AD)"
                            .to_string()
                    })?,
            };
            out.extend_from_slice(&micros.to_be_bytes());
        }
        (&Type::INTERVAL, SqlValue::Interval(interval)) => {
            out.extend_from_slice(&interval.microseconds.to_be_bytes());
            out.extend_from_slice(&interval.days.to_be_bytes());
            out.extend_from_slice(&interval.months.to_be_bytes());
        }
        (&Type::JSON, SqlValue::Json(text)) => out.extend_from_slice(text.as_bytes()),
        (&Type::JSONB, SqlValue::Json(text)) => {
            out.push(1);
            out.extend_from_slice(text.as_bytes());
        }
        _ if !is_supported_scalar(ty) => {
            return Err(format!(
                "parameters of type {} are not supported: cast the placeholder, e.g. $n::text, and send text",
                ty.name()
            ))
        }
        _ => return Err(mismatch(value, ty)),
    }
    Ok(())
}

fn mismatch(value: &SqlValue, ty: &Type) -> String {
    format!(
        "a {} value cannot be sent to a parameter of type {}: send the matching kind or cast the placeholder in SQL (e.g. $n::{})",
        value.kind(),
        ty.name(),
        cast_hint(value)
    )
}

fn cast_hint(value: &SqlValue) -> &'static str {
    match value {
        SqlValue::Int(_) => "int8",
        SqlValue::Float(_) => "float8",
        SqlValue::Bool(_) => "bool",
        SqlValue::Numeric(_) => "numeric",
        SqlValue::Bytes(_) => "bytea",
        SqlValue::Uuid(_) => "uuid",
        SqlValue::Date(_) => "date",
        SqlValue::Time(_) => "time",
        SqlValue::Timestamp(_) => "timestamp",
        SqlValue::Timestamptz(_) => "timestamptz",
        SqlValue::Interval(_) => "interval",
        SqlValue::Json(_) => "jsonb",
        SqlValue::Array(_) => "text[]",
        SqlValue::Null | SqlValue::Text(_) => "text",
    }
}

fn narrow<T: TryFrom<i64>>(value: i64, ty: &Type) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("{value} is out of range for {}", ty.name()))
}

fn parse_date(text: &str) -> Result<i32, String> {
    match text {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let date = NaiveDate::parse_from_str(text, DATE_FORMAT)
        .map_err(|err| format!("`{text}` is not a date (YYYY-MM-DD): {err}"))?;
    i32::try_from((date - pg_epoch().date()).num_days())
        .map_err(|_| format!("`{text}` is out of range"))
}

/// `v` as float4, refused where PostgreSQL refuses it: finite but beyond
/// float4's range (it would become infinity), or so small it would become 0.
fn float4(v: f64) -> Result<f32, String> {
    let narrowed = v as f32;
    let overflow = v.is_finite() && narrowed.is_infinite();
    let underflow = v != 0.0 && narrowed == 0.0;
    if overflow || underflow {
        return Err(format!("{v} is out of range for float4"));
    }
    Ok(narrowed)
}

/// The end of the day, which PostgreSQL's `time` allows and chrono cannot hold.
const END_OF_DAY_US: i64 = 86_400_000_000;

/// PostgreSQL keeps microseconds: a seventh fractional digit other than
/// zero would be cut off (or rounded) silently.
fn at_most_microseconds(text: &str) -> Result<(), String> {
    let fraction = text
        .rsplit_once('.')
        .map(|(_, digits)| digits.trim_end_matches('0'))
        .unwrap_or_default();
    if fraction.len() > 6 && fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has more than 6 fractional digits; PostgreSQL keeps microseconds"
        ));
    }
    Ok(())
}

fn parse_time(text: &str) -> Result<i64, String> {
    if matches!(text, "24:00:00" | "24:00")
        || text
            .strip_prefix("24:00:00.")
            .is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b == b'0'))
    {
        return Ok(END_OF_DAY_US);
    }
    at_most_microseconds(text)?;
    let time = NaiveTime::parse_from_str(text, TIME_FORMAT)
        .map_err(|err| format!("`{text}` is not a time (HH:MM:SS[.ffffff]): {err}"))?;
    let since_midnight = time - NaiveTime::MIN;
    since_midnight
        .num_microseconds()
        .ok_or_else(|| format!("`{text}` is out of range"))
}

fn parse_timestamp(text: &str) -> Result<i64, String> {
    match text {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    at_most_microseconds(text)?;
    let normalized = text.replacen(' ', "T", 1);
    let ts = NaiveDateTime::parse_from_str(&normalized, TIMESTAMP_FORMAT).map_err(|err| {
        format!("`{text}` is not a timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff]): {err}")
    })?;
    (ts - pg_epoch())
        .num_microseconds()
        .ok_or_else(|| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float4_parameters_are_range_checked_like_postgresql() {
        for bad in [1e300, -1e300, 1e-50, -1e-50, f64::from(f32::MAX) * 2.0] {
            assert!(
                encode_param(&SqlValue::Float(bad), &Type::FLOAT4).is_err(),
                "{bad}"
            );
        }
        for good in [
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            3.4e38,
            1.2e-38,
        ] {
            assert!(
                encode_param(&SqlValue::Float(good), &Type::FLOAT4).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn timestamptz_parameters_are_range_checked_like_postgresql() {
        let at = |us: i64| {
            encode_param(
                &SqlValue::Timestamptz(Instant::UnixMicros(i128::from(us))),
                &Type::TIMESTAMPTZ,
            )
        };
        assert!(at(i64::MIN).is_err(), "near i64::MIN is not -infinity");
        assert!(at(PG_TIMESTAMP_MIN + PG_EPOCH_UNIX_MICROS - 1).is_err());
        assert!(at(PG_TIMESTAMP_MIN + PG_EPOCH_UNIX_MICROS).is_ok());
        // i64::MAX microseconds after 1970 is in year 294247: still in range.
        assert!(at(i64::MAX).is_ok());
        assert!(at(0).is_ok());
    }

    #[test]
    fn the_end_of_the_day_is_a_time() {
        assert_eq!(parse_time("24:00:00"), Ok(END_OF_DAY_US));
        assert_eq!(parse_time("24:00:00.000000"), Ok(END_OF_DAY_US));
        assert!(parse_time("24:00:01").is_err());
        assert!(parse_time("24:00:00.5").is_err());
        assert_eq!(parse_time("00:00:01"), Ok(1_000_000));
    }

    #[test]
    fn int_parameters_are_range_checked() {
        assert!(encode_param(&SqlValue::Int(40_000), &Type::INT2).is_err());
        assert!(encode_param(&SqlValue::Int(-32_768), &Type::INT2).is_ok());
        assert!(encode_param(&SqlValue::Int(i64::MIN), &Type::INT8).is_ok());
    }

    #[test]
    fn mismatched_kind_names_both_types() {
        let err = encode_param(&SqlValue::Text("x".into()), &Type::INT4).unwrap_err();
        assert!(err.contains("text value") && err.contains("int4"), "{err}");
    }

    #[test]
    fn dates_and_timestamps_round_trip_through_wire_values() {
        let days = parse_date("1999-12-31").unwrap();
        assert_eq!(days, -1);
        assert_eq!(format_date(days).unwrap(), "1999-12-31");
        let micros = parse_timestamp("2000-01-01T00:00:01.5").unwrap();
        assert_eq!(micros, 1_500_000);
        assert_eq!(format_timestamp(micros).unwrap(), "2000-01-01T00:00:01.500");
        assert_eq!(
            format_time(parse_time("23:59:59.999999").unwrap()).unwrap(),
            "23:59:59.999999"
        );
    }
}

//! The caller's gRPC deadline, read from the `grpc-timeout` header.
//!
//! tonic also enforces that header, answering CANCELLED the instant it
//! passes and dropping the handler. The query path must answer first, with
//! DEADLINE_EXCEEDED and the statement cancelled in PostgreSQL, so it works
//! to a deadline slightly earlier than the caller's.

use std::time::Duration;

use tokio::time::Instant;

const MAX_MARGIN: Duration = Duration::from_millis(50);

/// When the handler must be done, or `None` if the caller set no deadline.
pub(crate) fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let header = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_timeout(header)?;
    let margin = (timeout / 10).min(MAX_MARGIN);
    // A deadline too far to represent is no deadline.
    Instant::now().checked_add(timeout - margin)
}

/// Parses the gRPC wire format: up to 8 digits and a unit (H M S m u n).
fn parse_timeout(header: &str) -> Option<Duration> {
    let split = header.len().checked_sub(1)?;
    let (digits, unit) = header.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("123456789S"), None);
        assert_eq!(parse_timeout("10x"), None);
        assert_eq!(parse_timeout(""), None);
    }
}

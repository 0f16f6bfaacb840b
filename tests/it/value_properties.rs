//! Property test of value conversion through real PostgreSQL: random values
//! of each supported type, edges included, either come back exactly as sent
//! or are refused with INVALID_ARGUMENT. Nothing silently changes.
//!
//! The values come from proptest strategies with a fixed seed (a failure
//! is reproducible), then travel one Execute each (`SELECT $1::type`).

use poolplane::proto::{value::Kind, Value};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use tonic::Code;

use crate::support::{config_yaml, exec, v, PoolSpec, TestServer};

const POOL: &str = "properties";
const CASES: usize = 150;

/// `CASES` values from `strategy`, the same on every run.
fn sample<S: Strategy>(strategy: S) -> Vec<S::Value> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    (0..CASES)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .map(|tree| tree.current())
                .unwrap_or_else(|reason| panic!("no value: {reason}"))
        })
        .collect()
}

/// What `SELECT $1::ty` answers for `value`: the value back, or the code.
async fn echo(server: &TestServer, ty: &str, value: Value) -> Result<Value, Code> {
    server
        .query()
        .await
        .execute(exec(POOL, &format!("SELECT $1::{ty}"), vec![value]))
        .await
        .map(|response| response.into_inner().rows[0].values[0].clone())
        .map_err(|status| status.code())
}

fn float_of(value: &Value) -> f64 {
    match value.kind {
        Some(Kind::FloatValue(f)) => f,
        ref other => panic!("expected a float, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_exactly_or_is_refused() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(POOL, 2)])).await;

    for i in sample(any::<i64>())
        .into_iter()
        .chain([i64::MIN, i64::MAX, 0])
    {
        assert_eq!(
            echo(&server, "int8", v::int(i)).await,
            Ok(v::int(i)),
            "int8 {i}"
        );
        let int4 = echo(&server, "int4", v::int(i)).await;
        if i32::try_from(i).is_ok() {
            assert_eq!(int4, Ok(v::int(i)), "int4 {i}");
        } else {
            assert_eq!(int4, Err(Code::InvalidArgument), "int4 {i}");
        }
    }

    let edges = [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        1e300,
        1e-50,
        3.4e38,
        1.2e-38,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    for f in sample(any::<f64>()).into_iter().chain(edges) {
        let back = echo(&server, "float8", v::float(f))
            .await
            .map(|v| float_of(&v));
        match back {
            Ok(b) if f.is_nan() => assert!(b.is_nan(), "float8 {f} came back {b}"),
            Ok(b) => assert_eq!(b.to_bits(), f.to_bits(), "float8 {f} came back {b}"),
            Err(code) => panic!("float8 {f} refused: {code:?}"),
        }
        let narrowed = f as f32;
        let overflow = f.is_finite() && narrowed.is_infinite();
        let underflow = f != 0.0 && narrowed == 0.0;
        let in_range = !(overflow || underflow);
        match echo(&server, "float4", v::float(f))
            .await
            .map(|v| float_of(&v))
        {
            Ok(b) if f.is_nan() => assert!(b.is_nan()),
            Ok(b) => {
                assert!(in_range, "float4 {f} should be refused, came back {b}");
                assert_eq!(
                    b,
                    f64::from(narrowed),
                    "float4 {f}: rounded as PostgreSQL rounds"
                );
            }
            Err(code) => {
                assert!(!in_range, "float4 {f} refused: {code:?}");
                assert_eq!(code, Code::InvalidArgument);
            }
        }
    }

    for text in sample("[^\u{0}]{0,40}") {
        assert_eq!(
            echo(&server, "text", v::text(&text)).await,
            Ok(v::text(&text)),
            "{text:?}"
        );
    }
    for bytes in sample(proptest::collection::vec(any::<u8>(), 0..64)) {
        assert_eq!(
            echo(&server, "bytea", v::bytes(&bytes)).await,
            Ok(v::bytes(&bytes))
        );
    }
    // Canonical decimal text (no leading zeros, no negative zero), any scale.
    let decimal = "(0|[1-9][0-9]{0,30})(\\.[0-9]{1,30})?";
    for (negative, digits) in sample((any::<bool>(), decimal)) {
        let zero = digits.chars().all(|c| c == '0' || c == '.');
        let text = if negative && !zero {
            format!("-{digits}")
        } else {
            digits
        };
        assert_eq!(
            echo(&server, "numeric", v::numeric(&text)).await,
            Ok(v::numeric(&text)),
            "numeric {text}"
        );
    }
    server.stop().await;
}

//! `poolplane ctl watch`: PoolEvents/Watch, one event per line as it
//! arrives (text, or one JSON object per line with `-o json`), the kind in
//! colour for a terminal. Ends with exit 0 on Ctrl-C (or SIGTERM), when
//! the server ends the stream, or when stdout is closed.

use poolplane::proto::{self, event::Detail};

use super::args::{Output, WatchArgs};
use super::error::CtlError;
use super::json::enum_str;
use super::render::health_name;
use super::table::{age, ms, percent, printable, short, time};
use super::{json, write_out, Api};

pub(crate) async fn run(api: &Api, args: WatchArgs) -> Result<(), CtlError> {
    let request = proto::WatchRequest {
        pools: args.pools,
        kinds: args.kinds.iter().map(|k| k.to_proto() as i32).collect(),
        snapshot: args.snapshot,
        resume_after: None,
    };
    let mut stream = api
        .events()
        .watch(api.stream_request(request))
        .await?
        .into_inner();
    let mut stop = std::pin::pin!(interrupted());
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(()),
            event = stream.message() => event?,
        };
        let Some(event) = event else {
            // The server ended the stream (it is shutting down).
            return Ok(());
        };
        let line = match api.output {
            Output::Json => format!("{}\n", json::event(&event)),
            Output::Table => format!("{}\n", line(&event, api.color)),
        };
        write_out(&line)?;
    }
}

/// Resolves on Ctrl-C or SIGTERM (never, if neither can be listened for).
async fn interrupted() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                () = interrupt => {},
                _ = terminate.recv() => {},
            },
            Err(_) => interrupt.await,
        }
    }
    #[cfg(not(unix))]
    interrupt.await;
}

fn kind_name(kind: i32) -> String {
    short(
        enum_str(kind, proto::EventKind::as_str_name),
        "EVENT_KIND_",
        kind,
    )
}

/// The ANSI colour of a kind: red for trouble, green for good news, yellow
/// for changes, dim for routine.
fn colour(kind: i32) -> &'static str {
    use proto::EventKind as K;
    match K::try_from(kind) {
        Ok(
            K::ConnectionLost
            | K::AlertTriggered
            | K::ConfigReloadFailed
            | K::Lagged
            | K::SessionLeak,
        ) => "31",
        Ok(K::PoolCreated | K::ConnectionRecovered | K::AlertResolved | K::ConfigReloaded) => "32",
        Ok(K::PoolUpdated | K::PoolRemoved | K::HealthChanged | K::AlertAcknowledged) => "33",
        _ => "2",
    }
}

/// `TIME  #SEQ  POOL  KIND  DETAIL`, every part printable.
pub(crate) fn line(event: &proto::Event, color: bool) -> String {
    let sequence = match event.sequence {
        0 => "-".to_string(),
        n => format!("#{n}"),
    };
    let pool = if event.pool.is_empty() {
        "-".to_string()
    } else {
        printable(&event.pool)
    };
    let kind = kind_name(event.kind);
    let kind = if color {
        format!("\x1b[{}m{kind}\x1b[0m", colour(event.kind))
    } else {
        kind
    };
    let detail = printable(&detail(event));
    let line = format!(
        "{}  {sequence}  {pool}  {kind}  {detail}",
        time(event.time.as_ref())
    );
    line.trim_end().to_string()
}

/// The event's detail in a few words.
fn detail(event: &proto::Event) -> String {
    match &event.detail {
        None => String::new(),
        Some(Detail::HealthChanged(d)) => format!(
            "{} -> {}: {}",
            health_name(d.from),
            health_name(d.to),
            d.reason
        ),
        Some(Detail::ConnectionLost(d)) => d.error.clone(),
        Some(Detail::ConnectionRecovered(d)) => format!(
            "after {} failed checks, unhealthy for {}",
            d.failed_checks,
            age(d.unhealthy_for_ms)
        ),
        Some(Detail::CheckCompleted(d)) if d.error.is_empty() => {
            format!("{} in {} ms", health_name(d.state), ms(d.latency_ms))
        }
        Some(Detail::CheckCompleted(d)) => format!("{}: {}", health_name(d.state), d.error),
        Some(Detail::Snapshot(pool)) => {
            let s = pool.statistics.unwrap_or_default();
            let health = pool.health.as_ref().map_or(0, |h| h.state);
            format!(
                "{}{}, active {}/{}, idle {}, pending {}",
                health_name(health),
                if pool.paused { ", paused" } else { "" },
                s.active,
                s.max,
                s.idle,
                s.pending
            )
        }
        Some(Detail::SnapshotEnd(d)) => format!("live events follow #{}", d.sequence),
        Some(Detail::Lagged(d)) => format!("{} events lost: reading too slowly", d.lost),
        Some(Detail::Alert(a)) => format!(
            "alert {} {} {} {}: {}",
            a.id,
            short(
                enum_str(a.rule, proto::AlertRule::as_str_name),
                "ALERT_RULE_",
                a.rule
            ),
            short(
                enum_str(a.severity, proto::AlertSeverity::as_str_name),
                "ALERT_SEVERITY_",
                a.severity
            ),
            short(
                enum_str(a.state, proto::AlertState::as_str_name),
                "ALERT_STATE_",
                a.state
            ),
            a.message
        ),
        Some(Detail::Metrics(s)) => format!(
            "active {}/{}, utilization {}%, {:.1} acquisitions/s, wait avg {} ms, errors {}%",
            s.active,
            s.max,
            percent(s.utilization_ratio),
            s.acquisitions_per_second,
            ms(s.average_acquire_wait_ms),
            percent(s.error_rate_ratio)
        ),
        Some(Detail::SessionLeak(s)) => format!(
            "session {} held {} by {} from {}: {}",
            s.session_id,
            age(s.age_ms),
            s.caller,
            s.peer,
            s.last_statement
        ),
        Some(Detail::ConfigReload(r)) => {
            let lists = [
                ("created", &r.created),
                ("removed", &r.removed),
                ("changed", &r.changed),
                ("reconnected", &r.reconnected),
                ("restart needed", &r.restart_needed),
                ("failed", &r.failed),
                ("errors", &r.errors),
            ];
            lists
                .iter()
                .filter(|(_, names)| !names.is_empty())
                .map(|(what, names)| format!("{what}: {}", names.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(pool: &str) -> proto::Event {
        proto::Event {
            sequence: 42,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            pool: pool.into(),
            kind: proto::EventKind::HealthChanged as i32,
            detail: Some(Detail::HealthChanged(proto::HealthChanged {
                from: proto::HealthState::Healthy as i32,
                to: proto::HealthState::Unhealthy as i32,
                reason: "connection refused\n\u{1b}[2J".into(),
            })),
        }
    }

    #[test]
    fn a_line_says_when_what_and_where_and_nothing_a_terminal_would_run() {
        assert_eq!(
            line(&changed("orders"), false),
            "2023-11-14T22:13:20.000Z  #42  orders  health_changed  healthy -> unhealthy: connection refused\\n\\u{1b}[2J"
        );
        let coloured = line(&changed("orders"), true);
        assert!(
            coloured.contains("\x1b[33mhealth_changed\x1b[0m"),
            "{coloured}"
        );
        assert_eq!(coloured.matches('\x1b').count(), 2, "{coloured}");
    }
}

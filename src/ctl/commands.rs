//! Each `poolplane ctl` subcommand: its flags into a request, the call, and
//! the answer to [`Api::answer`] (JSON and table). `watch` is `watch.rs`.

use std::time::{Duration, SystemTime};

use poolplane::proto;

use super::args::{
    AlertAction, AlertsArgs, CreateArgs, CtlCommand, PauseArgs, PoolCommand, UpdateArgs,
};
use super::error::CtlError;
use super::{json, render, watch, Api};

/// Checks what needs no server, before anything connects.
pub(crate) fn check(command: &CtlCommand) -> Result<(), CtlError> {
    if let CtlCommand::Pool(PoolCommand::Update(update)) = command {
        if update_request(update).is_none() {
            return Err(CtlError::Usage(format!(
                "pool update {}: nothing to change (give --max, --min, a timeout, a threshold or a target)",
                update.name
            )));
        }
    }
    Ok(())
}

pub(crate) async fn run(api: &Api, command: CtlCommand) -> Result<(), CtlError> {
    match command {
        CtlCommand::Pools => pools(api).await,
        CtlCommand::Pool(PoolCommand::Show { name }) => show(api, name).await,
        CtlCommand::Pool(PoolCommand::Create(create)) => create_pool(api, create).await,
        CtlCommand::Pool(PoolCommand::Update(update)) => update_pool(api, &update).await,
        CtlCommand::Pool(PoolCommand::Delete {
            name,
            force,
            drain_timeout,
        }) => delete(api, name, force, drain_timeout).await,
        CtlCommand::Pause(pause) => pause_pool(api, pause).await,
        CtlCommand::Resume { name } => resume(api, name).await,
        CtlCommand::Reconnect { name } => reconnect(api, name).await,
        CtlCommand::Reload => reload(api).await,
        CtlCommand::Sessions { pool } => sessions(api, pool).await,
        CtlCommand::Kill { session_id } => kill(api, session_id).await,
        CtlCommand::Alerts(alerts) => alert_command(api, alerts).await,
        CtlCommand::History { name, since } => history(api, name, since).await,
        CtlCommand::Health { name, probe } => health(api, name, probe).await,
        CtlCommand::Watch(args) => watch::run(api, args).await,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn pools(api: &Api) -> Result<(), CtlError> {
    let answer = api
        .admin()
        .list_pools(api.request(proto::ListPoolsRequest {}))
        .await?
        .into_inner();
    api.answer(json::pools(&answer), || render::pools(&answer.pools))
}

async fn show(api: &Api, name: String) -> Result<(), CtlError> {
    let pool = api
        .admin()
        .get_pool(api.request(proto::GetPoolRequest { name }))
        .await?
        .into_inner();
    api.answer(json::pool(&pool), || render::pool(&pool))
}

async fn create_pool(api: &Api, create: CreateArgs) -> Result<(), CtlError> {
    let limits = &create.limits;
    let request = proto::CreatePoolRequest {
        name: create.name,
        host: create.host.unwrap_or_default(),
        port: create.port.map_or(0, u32::from),
        database: create.database,
        user: create.user.unwrap_or_default(),
        credential: create.credential.unwrap_or_default(),
        sslmode: create.sslmode.unwrap_or_default(),
        application_name: create.application_name.unwrap_or_default(),
        if_not_exists: create.if_not_exists,
        max_connections: limits.max,
        min_connections: limits.min,
        connection_timeout_ms: limits.connection_timeout_ms,
        idle_timeout_ms: limits.idle_timeout_ms,
        health_check_interval_ms: limits.health_check_interval_ms,
        statement_timeout_ms: limits.statement_timeout_ms,
        max_lifetime_ms: limits.max_lifetime_ms,
        utilization_alert_threshold: limits.utilization_alert_threshold,
        error_rate_alert_threshold: limits.error_rate_alert_threshold,
        acquire_wait_alert_threshold_ms: limits.acquire_wait_alert_threshold_ms,
        ..Default::default()
    };
    let pool = api
        .admin()
        .create_pool(api.request(request))
        .await?
        .into_inner();
    api.answer(json::pool(&pool), || render::pool(&pool))
}

/// The request, or `None` when it would change nothing.
fn update_request(update: &UpdateArgs) -> Option<proto::UpdatePoolRequest> {
    let limits = &update.limits;
    let request = proto::UpdatePoolRequest {
        name: update.name.clone(),
        max_connections: limits.max,
        min_connections: limits.min,
        connection_timeout_ms: limits.connection_timeout_ms,
        idle_timeout_ms: limits.idle_timeout_ms,
        health_check_interval_ms: limits.health_check_interval_ms,
        statement_timeout_ms: limits.statement_timeout_ms,
        max_lifetime_ms: limits.max_lifetime_ms,
        utilization_alert_threshold: limits.utilization_alert_threshold,
        error_rate_alert_threshold: limits.error_rate_alert_threshold,
        acquire_wait_alert_threshold_ms: limits.acquire_wait_alert_threshold_ms,
        host: update.host.clone(),
        port: update.port.map(u32::from),
        database: update.database.clone(),
        user: update.user.clone(),
        credential: update.credential.clone(),
    };
    let unchanged = proto::UpdatePoolRequest {
        name: update.name.clone(),
        ..Default::default()
    };
    (request != unchanged).then_some(request)
}

async fn update_pool(api: &Api, update: &UpdateArgs) -> Result<(), CtlError> {
    let request =
        update_request(update).ok_or_else(|| CtlError::Usage("nothing to change".into()))?;
    let pool = api
        .admin()
        .update_pool(api.request(request))
        .await?
        .into_inner();
    api.answer(json::pool(&pool), || render::pool(&pool))
}

/// Waits for the drain: the call's deadline is at least the drain's (the
/// server's default is 30 s) and ten seconds more.
async fn delete(
    api: &Api,
    name: String,
    force: bool,
    drain_timeout: Option<Duration>,
) -> Result<(), CtlError> {
    let drain = drain_timeout.unwrap_or(Duration::from_secs(30));
    let request = proto::DeletePoolRequest {
        name: name.clone(),
        drain_timeout_ms: drain_timeout.map_or(0, millis),
        force,
    };
    let deadline = api.timeout.max(drain + Duration::from_secs(10));
    let answer = api
        .admin()
        .delete_pool(api.request_within(request, deadline))
        .await?
        .into_inner();
    api.answer(json::deleted(&answer), || {
        format!(
            "deleted {}: {} server connections closed, {} calls cancelled\n",
            super::table::printable(&name),
            answer.connections_closed,
            answer.cancelled
        )
    })
}

async fn pause_pool(api: &Api, pause: PauseArgs) -> Result<(), CtlError> {
    let wait = pause.wait.unwrap_or(Duration::from_secs(30));
    let request = proto::PausePoolRequest {
        name: pause.name.clone(),
        timeout_ms: pause.wait.map_or(0, millis),
        force: pause.force,
        drain_connections: pause.drain_connections,
        queue_limit: pause.queue_limit.unwrap_or(0),
    };
    let deadline = api.timeout.max(wait + Duration::from_secs(10));
    let answer = api
        .admin()
        .pause_pool(api.request_within(request, deadline))
        .await?
        .into_inner();
    api.answer(json::paused(&answer), || {
        format!(
            "paused {}: {} calls cancelled, {} server connections open\n",
            super::table::printable(&pause.name),
            answer.cancelled,
            answer.connections_open
        )
    })
}

async fn resume(api: &Api, name: String) -> Result<(), CtlError> {
    let pool = api
        .admin()
        .resume_pool(api.request(proto::ResumePoolRequest { name }))
        .await?
        .into_inner();
    api.answer(json::pool(&pool), || {
        render::pools(std::slice::from_ref(&pool))
    })
}

async fn reconnect(api: &Api, name: String) -> Result<(), CtlError> {
    let pool = api
        .admin()
        .reconnect_pool(api.request(proto::ReconnectPoolRequest { name }))
        .await?
        .into_inner();
    api.answer(json::pool(&pool), || {
        render::pools(std::slice::from_ref(&pool))
    })
}

async fn reload(api: &Api) -> Result<(), CtlError> {
    let answer = api
        .admin()
        .reload_config(api.request(proto::ReloadConfigRequest {}))
        .await?
        .into_inner();
    api.answer(json::reload(&answer), || render::reload(&answer))?;
    // Applied, but not everywhere: a script must not take it for done.
    if answer.failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::PartlyDone(format!(
            "the reload left {} pool(s) as they were: {}",
            answer.failed.len(),
            answer.failed.join("; ")
        )))
    }
}

async fn sessions(api: &Api, pool: Option<String>) -> Result<(), CtlError> {
    let answer = api
        .admin()
        .list_sessions(api.request(proto::ListSessionsRequest {
            pool: pool.unwrap_or_default(),
        }))
        .await?
        .into_inner();
    api.answer(json::sessions(&answer), || {
        render::sessions(&answer.sessions)
    })
}

async fn kill(api: &Api, session_id: u64) -> Result<(), CtlError> {
    let answer = api
        .admin()
        .kill_session(api.request(proto::KillSessionRequest { session_id }))
        .await?
        .into_inner();
    api.answer(json::killed(&answer), || {
        let session = answer.session.clone().unwrap_or_default();
        format!(
            "killed session {session_id} (pool {}, caller {})\n",
            super::table::printable(&session.pool),
            super::table::printable(&session.caller)
        )
    })
}

async fn alert_command(api: &Api, alerts: AlertsArgs) -> Result<(), CtlError> {
    let alert = match alerts.action {
        None => return list_alerts(api, alerts).await,
        Some(AlertAction::Ack { id, by }) => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "poolplane ctl".into());
            api.admin()
                .acknowledge_alert(api.request(proto::AcknowledgeAlertRequest { id, by }))
                .await?
        }
        Some(AlertAction::Clear { id }) => {
            api.admin()
                .clear_alert(api.request(proto::ClearAlertRequest { id }))
                .await?
        }
    }
    .into_inner();
    api.answer(json::alert(&alert), || {
        render::alerts(std::slice::from_ref(&alert))
    })
}

async fn list_alerts(api: &Api, alerts: AlertsArgs) -> Result<(), CtlError> {
    let request = proto::ListAlertsRequest {
        include_ended: alerts.all,
        pool: alerts.pool.unwrap_or_default(),
        severity: alerts.severity.map_or(0, |s| s.to_proto() as i32),
    };
    let answer = api
        .admin()
        .list_alerts(api.request(request))
        .await?
        .into_inner();
    api.answer(json::alerts(&answer), || render::alerts(&answer.alerts))
}

async fn history(api: &Api, name: String, since: Option<Duration>) -> Result<(), CtlError> {
    let from = since
        .and_then(|since| SystemTime::now().checked_sub(since))
        .map(prost_types::Timestamp::from);
    let answer = api
        .admin()
        .get_metrics_history(api.request(proto::GetMetricsHistoryRequest {
            pool: name,
            from,
            to: None,
        }))
        .await?
        .into_inner();
    api.answer(json::history(&answer), || render::history(&answer))
}

/// What the monitor knows (GetPool, ListPools: a read), or a probe now
/// (CheckHealth: an operation); the same shape either way.
async fn health(api: &Api, name: Option<String>, probe: bool) -> Result<(), CtlError> {
    let answer = if probe {
        api.admin()
            .check_health(api.request(proto::CheckHealthRequest {
                pool: name.unwrap_or_default(),
            }))
            .await?
            .into_inner()
    } else {
        let pools = match name {
            Some(name) => vec![api
                .admin()
                .get_pool(api.request(proto::GetPoolRequest { name }))
                .await?
                .into_inner()],
            None => {
                api.admin()
                    .list_pools(api.request(proto::ListPoolsRequest {}))
                    .await?
                    .into_inner()
                    .pools
            }
        };
        proto::CheckHealthResponse {
            results: pools
                .into_iter()
                .map(|pool| proto::PoolHealthResult {
                    pool: pool.spec.map(|s| s.name).unwrap_or_default(),
                    health: pool.health,
                })
                .collect(),
        }
    };
    api.answer(json::health_results(&answer), || {
        render::health(&answer.results)
    })
}

//! `poolplane.v1.PoolAdmin`: translation only; `App` does the work.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::{authorize, identity, Audit};
use super::convert::{
    alert_to_proto, health_to_proto, millis, pool_to_proto, reload_to_proto, sample_to_proto,
    session_to_proto, severity_from_proto,
};
use super::status::{
    alert_status, invalid_argument, invalid_config, pool_status, reload_status, session_not_found,
};
use crate::app::App;
use crate::auth::Right;
use crate::config::{pool_from_request, PoolRequest, Secret, TargetRequest};
use crate::monitor::{AlertError, AlertFilter};
use crate::pool::{LimitsUpdate, PauseOptions, PoolInfo};
use crate::proto::{self, pool_admin_server::PoolAdmin};

/// Calls that may wait for a paused pool when PausePool names no limit.
const DEFAULT_PAUSE_QUEUE_LIMIT: usize = 1000;

pub(crate) struct AdminService {
    app: Arc<App>,
}

impl AdminService {
    pub(crate) fn new(app: Arc<App>) -> AdminService {
        AdminService { app }
    }

    /// The pool a request names, or (named none) every pool the caller may
    /// do `right` on.
    fn named_or_all<T>(
        &self,
        request: &Request<T>,
        right: Right,
        name: &str,
    ) -> Result<Vec<String>, Status> {
        if !name.is_empty() {
            authorize(request, right, name)?;
            return Ok(vec![name.to_string()]);
        }
        let scope = &identity(request)?.pools;
        Ok(self
            .app
            .registry()
            .names()
            .into_iter()
            .filter(|pool| scope.contains(pool))
            .collect())
    }

    /// A password in a request: only from an admin, and only where it
    /// travels encrypted (TLS on the listener) or nobody authenticates.
    fn may_send_a_password<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let server = self.app.server();
        if !server.auth.is_on() {
            return Ok(());
        }
        if identity(request)?.role != crate::auth::Role::Admin {
            return Err(Status::permission_denied(
                "only an admin may send a password: name a login from connection_pool.credentials in `credential`",
            ));
        }
        if server.tls.is_none() {
            return Err(Status::failed_precondition(
                "a password may only be sent over TLS (server.tls): name a login from connection_pool.credentials in `credential`",
            ));
        }
        Ok(())
    }

    /// An alert may be acknowledged or cleared by who may operate its pool.
    /// One on a pool outside the caller's scope is, to that caller, no
    /// alert at all: the answer must not tell that it exists, nor its pool.
    fn authorize_alert<T>(&self, request: &Request<T>, id: u64) -> Result<(), Status> {
        let every = AlertFilter {
            include_ended: true,
            pool: None,
            severity: None,
        };
        let found = self
            .app
            .monitoring()
            .alerts(&every)
            .into_iter()
            .find(|alert| alert.id == id);
        let Some(alert) = found else {
            return Ok(());
        };
        if !identity(request)?.pools.contains(&alert.pool) {
            return Err(alert_status(AlertError::NotFound(id)));
        }
        authorize(request, Right::Operate, &alert.pool)
    }

    /// A pool's report with its current health.
    fn pool_report(&self, info: PoolInfo) -> proto::Pool {
        let health = self.app.health(&info.config.name);
        pool_to_proto(info, &health)
    }
}

fn required_name(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        Err(invalid_argument("name", "must not be empty"))
    } else {
        Ok(name)
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[tonic::async_trait]
impl PoolAdmin for AdminService {
    async fn list_pools(
        &self,
        request: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let scope = &identity(&request)?.pools;
        let pools = self
            .app
            .registry()
            .list()
            .into_iter()
            .filter(|info| scope.contains(&info.config.name))
            .map(|info| self.pool_report(info))
            .collect();
        Ok(Response::new(proto::ListPoolsResponse { pools }))
    }

    async fn get_pool(
        &self,
        request: Request<proto::GetPoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        authorize(&request, Right::Read, &request.get_ref().name)?;
        let request = request.into_inner();
        let pool = self
            .app
            .registry()
            .get(required_name(&request.name)?)
            .map_err(pool_status)?;
        Ok(Response::new(self.pool_report(pool.info())))
    }

    async fn create_pool(
        &self,
        request: Request<proto::CreatePoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let audit = Audit::of(&request, "CreatePool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                if !request.get_ref().password.is_empty() {
                    self.may_send_a_password(&request)?;
                }
                let r = request.into_inner();
                let if_not_exists = r.if_not_exists;
                let pool_request = PoolRequest {
                    name: r.name,
                    host: non_empty(r.host),
                    port: (r.port != 0).then_some(r.port),
                    database: r.database,
                    user: non_empty(r.user),
                    password: non_empty(r.password).map(Secret::new),
                    password_env: non_empty(r.password_env),
                    password_file: non_empty(r.password_file),
                    credential: non_empty(r.credential),
                    sslmode: non_empty(r.sslmode),
                    application_name: non_empty(r.application_name),
                    max_connections: r.max_connections,
                    min_connections: r.min_connections,
                    connection_timeout_ms: r.connection_timeout_ms,
                    idle_timeout_ms: r.idle_timeout_ms,
                    health_check_interval_ms: r.health_check_interval_ms,
                    statement_timeout_ms: r.statement_timeout_ms,
                    max_lifetime_ms: r.max_lifetime_ms,
                    utilization_alert_threshold: r.utilization_alert_threshold,
                    error_rate_alert_threshold: r.error_rate_alert_threshold,
                    acquire_wait_alert_threshold_ms: r.acquire_wait_alert_threshold_ms,
                };
                let config = pool_from_request(pool_request, &self.app.registry().defaults())
                    .map_err(|errors| invalid_config(&errors))?;
                let pool = self
                    .app
                    .create_requested_pool(config, if_not_exists)
                    .map_err(pool_status)?;
                Ok(Response::new(self.pool_report(pool.info())))
            }
            .await,
        )
    }

    async fn update_pool(
        &self,
        request: Request<proto::UpdatePoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let audit = Audit::of(&request, "UpdatePool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                let r = request.into_inner();
                let update = LimitsUpdate {
                    max_connections: r.max_connections,
                    min_connections: r.min_connections,
                    connection_timeout: r.connection_timeout_ms.map(Duration::from_millis),
                    idle_timeout: r.idle_timeout_ms.map(Duration::from_millis),
                    health_check_interval: r.health_check_interval_ms.map(Duration::from_millis),
                    statement_timeout: r
                        .statement_timeout_ms
                        .map(|ms| (ms > 0).then(|| Duration::from_millis(ms))),
                    max_lifetime: r.max_lifetime_ms.map(Duration::from_millis),
                    utilization_alert_threshold: r.utilization_alert_threshold,
                    error_rate_alert_threshold: r.error_rate_alert_threshold,
                    acquire_wait_alert_threshold: r
                        .acquire_wait_alert_threshold_ms
                        .map(Duration::from_millis),
                };
                let target = TargetRequest {
                    host: r.host,
                    port: r.port,
                    database: r.database,
                    user: r.user,
                    credential: r.credential,
                };
                let info = self
                    .app
                    .update_pool(required_name(&r.name)?, update, target)
                    .await
                    .map_err(pool_status)?;
                Ok(Response::new(self.pool_report(info)))
            }
            .await,
        )
    }

    async fn delete_pool(
        &self,
        request: Request<proto::DeletePoolRequest>,
    ) -> Result<Response<proto::DeletePoolResponse>, Status> {
        let audit = Audit::of(&request, "DeletePool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                let r = request.into_inner();
                let drain_timeout = match r.drain_timeout_ms {
                    0 => self.app.server().drain_timeout,
                    ms => Duration::from_millis(ms),
                };
                let (report, info) = self
                    .app
                    .delete_pool(required_name(&r.name)?, drain_timeout, r.force)
                    .await
                    .map_err(pool_status)?;
                Ok(Response::new(proto::DeletePoolResponse {
                    cancelled: report.cancelled,
                    connections_closed: report.connections_closed,
                    pool: Some(self.pool_report(info)),
                }))
            }
            .await,
        )
    }

    async fn reset_statistics(
        &self,
        request: Request<proto::ResetStatisticsRequest>,
    ) -> Result<Response<proto::ResetStatisticsResponse>, Status> {
        let audit = Audit::of(&request, "ResetStatistics", &request.get_ref().pool);
        audit.record(
            async move {
                let pools = self.named_or_all(&request, Right::Operate, &request.get_ref().pool)?;
                for name in &pools {
                    self.app
                        .registry()
                        .get(name)
                        .map_err(pool_status)?
                        .reset_statistics();
                }
                Ok(Response::new(proto::ResetStatisticsResponse { pools }))
            }
            .await,
        )
    }

    async fn check_health(
        &self,
        request: Request<proto::CheckHealthRequest>,
    ) -> Result<Response<proto::CheckHealthResponse>, Status> {
        let audit = Audit::of(&request, "CheckHealth", &request.get_ref().pool);
        audit.record(
            async move {
                let scope = identity(&request)?.pools.clone();
                let name = non_empty(request.get_ref().pool.clone());
                if let Some(name) = &name {
                    authorize(&request, Right::Operate, name)?;
                }
                let checked = self
                    .app
                    .check_health(name.as_deref())
                    .await
                    .map_err(pool_status)?
                    .into_iter()
                    .filter(|(info, _)| scope.contains(&info.config.name));
                let results = checked
                    .into_iter()
                    .map(|(info, report)| proto::PoolHealthResult {
                        pool: info.config.name.clone(),
                        health: Some(health_to_proto(&report, info.stats.broken_connections)),
                    })
                    .collect();
                Ok(Response::new(proto::CheckHealthResponse { results }))
            }
            .await,
        )
    }

    async fn get_metrics_history(
        &self,
        request: Request<proto::GetMetricsHistoryRequest>,
    ) -> Result<Response<proto::GetMetricsHistoryResponse>, Status> {
        authorize(&request, Right::Read, &request.get_ref().pool)?;
        let r = request.into_inner();
        let from = r.from.map(|t| system_time("from", t)).transpose()?;
        let to = r.to.map(|t| system_time("to", t)).transpose()?;
        let samples = self
            .app
            .metrics_history(required_name(&r.pool)?, from, to)
            .map_err(pool_status)?;
        let config = self.app.monitoring().config();
        Ok(Response::new(proto::GetMetricsHistoryResponse {
            samples: samples.iter().map(sample_to_proto).collect(),
            collection_interval_ms: millis(config.collection_interval),
            retention_period_ms: millis(config.retention_period),
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<proto::ListAlertsRequest>,
    ) -> Result<Response<proto::ListAlertsResponse>, Status> {
        let scope = identity(&request)?.pools.clone();
        if !request.get_ref().pool.is_empty() {
            authorize(&request, Right::Read, &request.get_ref().pool)?;
        }
        let r = request.into_inner();
        let filter = AlertFilter {
            include_ended: r.include_ended,
            pool: non_empty(r.pool),
            severity: severity_from_proto(r.severity)?,
        };
        let alerts = self
            .app
            .alerts(&filter)
            .map_err(pool_status)?
            .iter()
            .filter(|alert| scope.contains(&alert.pool))
            .map(alert_to_proto)
            .collect();
        Ok(Response::new(proto::ListAlertsResponse { alerts }))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<proto::AcknowledgeAlertRequest>,
    ) -> Result<Response<proto::Alert>, Status> {
        let audit = Audit::of(
            &request,
            "AcknowledgeAlert",
            &request.get_ref().id.to_string(),
        );
        audit.record(
            async move {
                self.authorize_alert(&request, request.get_ref().id)?;
                let r = request.into_inner();
                check_acknowledger(&r.by)?;
                let alert = self
                    .app
                    .acknowledge_alert(r.id, &r.by)
                    .map_err(alert_status)?;
                Ok(Response::new(alert_to_proto(&alert)))
            }
            .await,
        )
    }

    async fn clear_alert(
        &self,
        request: Request<proto::ClearAlertRequest>,
    ) -> Result<Response<proto::Alert>, Status> {
        let audit = Audit::of(&request, "ClearAlert", &request.get_ref().id.to_string());
        audit.record(
            async move {
                self.authorize_alert(&request, request.get_ref().id)?;
                let alert = self
                    .app
                    .clear_alert(request.into_inner().id)
                    .map_err(alert_status)?;
                Ok(Response::new(alert_to_proto(&alert)))
            }
            .await,
        )
    }

    async fn pause_pool(
        &self,
        request: Request<proto::PausePoolRequest>,
    ) -> Result<Response<proto::PausePoolResponse>, Status> {
        let audit = Audit::of(&request, "PausePool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                let r = request.into_inner();
                let options = PauseOptions {
                    timeout: match r.timeout_ms {
                        0 => self.app.server().drain_timeout,
                        ms => Duration::from_millis(ms),
                    },
                    force: r.force,
                    close_connections: r.drain_connections,
                    queue_limit: match r.queue_limit {
                        0 => DEFAULT_PAUSE_QUEUE_LIMIT,
                        limit => limit as usize,
                    },
                };
                let (report, info) = self
                    .app
                    .pause_pool(required_name(&r.name)?, options)
                    .await
                    .map_err(pool_status)?;
                Ok(Response::new(proto::PausePoolResponse {
                    cancelled: report.cancelled,
                    connections_open: report.connections_open,
                    pool: Some(self.pool_report(info)),
                }))
            }
            .await,
        )
    }

    async fn resume_pool(
        &self,
        request: Request<proto::ResumePoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let audit = Audit::of(&request, "ResumePool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                let info = self
                    .app
                    .resume_pool(required_name(&request.get_ref().name)?)
                    .map_err(pool_status)?;
                Ok(Response::new(self.pool_report(info)))
            }
            .await,
        )
    }

    async fn reconnect_pool(
        &self,
        request: Request<proto::ReconnectPoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let audit = Audit::of(&request, "ReconnectPool", &request.get_ref().name);
        audit.record(
            async move {
                authorize(&request, Right::Operate, &request.get_ref().name)?;
                let info = self
                    .app
                    .reconnect_pool(required_name(&request.get_ref().name)?)
                    .await
                    .map_err(pool_status)?;
                Ok(Response::new(self.pool_report(info)))
            }
            .await,
        )
    }

    async fn reload_config(
        &self,
        request: Request<proto::ReloadConfigRequest>,
    ) -> Result<Response<proto::ReloadConfigResponse>, Status> {
        let audit = Audit::of(&request, "ReloadConfig", "");
        audit.record(
            async move {
                // The file holds every pool: only whoever may operate them all.
                if !identity(&request)?.pools.is_all() {
                    return Err(Status::permission_denied(
                        "ReloadConfig changes every pool: it needs a caller whose pools are [\"*\"]",
                    ));
                }
                let report = self.app.reload_config().await.map_err(reload_status)?;
                Ok(Response::new(reload_to_proto(report)))
            }
            .await,
        )
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        let pools = self.named_or_all(&request, Right::Read, &request.get_ref().pool)?;
        let named = !request.get_ref().pool.is_empty();
        if named {
            self.app
                .registry()
                .get(&request.get_ref().pool)
                .map_err(pool_status)?;
        }
        let sessions = self
            .app
            .sessions()
            .list(named.then(|| request.get_ref().pool.as_str()))
            .iter()
            .filter(|session| pools.contains(&session.pool))
            .map(session_to_proto)
            .collect();
        Ok(Response::new(proto::ListSessionsResponse { sessions }))
    }

    async fn kill_session(
        &self,
        request: Request<proto::KillSessionRequest>,
    ) -> Result<Response<proto::KillSessionResponse>, Status> {
        let id = request.get_ref().session_id;
        let audit = Audit::of(&request, "KillSession", &id.to_string());
        audit.record(
            async move {
                let sessions = self.app.sessions();
                let Some(session) = sessions.get(id) else {
                    return Err(session_not_found(id));
                };
                // A session of a pool outside the caller's scope is, to
                // that caller, no session at all.
                if !identity(&request)?.pools.contains(&session.pool) {
                    return Err(session_not_found(id));
                }
                authorize(&request, Right::Operate, &session.pool)?;
                let killed = sessions.kill(id).ok_or_else(|| session_not_found(id))?;
                Ok(Response::new(proto::KillSessionResponse {
                    session: Some(session_to_proto(&killed)),
                }))
            }
            .await,
        )
    }
}

fn system_time(
    field: &str,
    timestamp: prost_types::Timestamp,
) -> Result<std::time::SystemTime, Status> {
    std::time::SystemTime::try_from(timestamp)
        .map_err(|_| invalid_argument(field, "not a valid timestamp"))
}

/// Most characters of `AcknowledgeAlert.by`: a name, kept with the alert
/// and sent to every Watch subscriber.
const MAX_ACKNOWLEDGER_CHARS: usize = 128;

/// A name a terminal or page shows as it is: bounded, with no control
/// characters and no bidirectional overrides.
fn check_acknowledger(by: &str) -> Result<(), Status> {
    if by.chars().count() > MAX_ACKNOWLEDGER_CHARS {
        return Err(invalid_argument(
            "by",
            &format!("longer than {MAX_ACKNOWLEDGER_CHARS} characters"),
        ));
    }
    if by.chars().any(crate::display::misleading) {
        return Err(invalid_argument(
            "by",
            "holds control, invisible or direction-changing characters",
        ));
    }
    Ok(())
}

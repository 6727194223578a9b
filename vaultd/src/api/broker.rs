//! The broker's admin service: budgets (and live provider checks), for the
//! vault's owner on the admin socket.

use crate::broker::Broker;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, broker_admin_server::BrokerAdmin};

pub struct BrokerApi {
    /// `None`: no broker configured (every list is empty).
    broker: Option<Arc<Broker>>,
}

impl BrokerApi {
    pub fn new(broker: Option<Arc<Broker>>) -> Self {
        BrokerApi { broker }
    }
}

#[tonic::async_trait]
impl BrokerAdmin for BrokerApi {
    async fn budgets(&self, _: Request<v1::BudgetsRequest>) -> Result<Response<v1::BudgetsResponse>, Status> {
        let rows = self.broker.as_ref().map(|b| b.budgets()).unwrap_or_default();
        let budgets = rows
            .into_iter()
            .map(|r| v1::BudgetUse {
                over: r.over(),
                client: r.client,
                route: r.route,
                requests_this_minute: r.spent.requests_this_minute,
                requests_today: r.spent.requests_today,
                tokens_today: r.spent.tokens_today,
                cost_today: r.spent.cost_today,
                requests_per_minute: r.budget.requests_per_minute,
                requests_per_day: r.budget.requests_per_day,
                tokens_per_day: r.budget.tokens_per_day,
                cost_per_day: r.budget.cost_per_day,
                resets_unix: r.resets_unix,
            })
            .collect();
        Ok(Response::new(v1::BudgetsResponse { budgets }))
    }

    async fn check_providers(
        &self,
        req: Request<v1::CheckProvidersRequest>,
    ) -> Result<Response<v1::CheckProvidersResponse>, Status> {
        let actor = super::actor("admin", &req);
        let routes = req.into_inner().routes;
        let Some(broker) = &self.broker else {
            return match routes.first() {
                Some(name) => Err(Status::not_found(format!("no route named {name:?}: [broker] has no routes"))),
                None => Ok(Response::new(v1::CheckProvidersResponse::default())),
            };
        };
        if routes.iter().any(|r| vault_proto::names::validate(r).is_err()) {
            return Err(Status::invalid_argument("a route name is not valid"));
        }
        if let Some(name) = broker.unknown_route(&routes) {
            return Err(Status::not_found(format!("no route named {name:?} in [broker]")));
        }
        let checks = broker.check(&routes, &actor).await?;
        let checks = checks
            .into_iter()
            .map(|c| v1::ProviderCheck {
                route: c.route,
                provider: c.provider.into(),
                secret: c.secret,
                ok: c.ok,
                detail: c.detail,
            })
            .collect();
        Ok(Response::new(v1::CheckProvidersResponse { checks }))
    }
}

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
}

//! vaultd: keeps provider API keys and bot tokens encrypted under a master key and
//! hands each agent process only what it was granted, over gRPC on unix sockets.
//!
//! A request flows one way: [`server`] (socket) → [`identity`] → [`policy`] →
//! [`vault`] ([`store`], [`crypto`]) → reply, with [`api`] as the only place that
//! speaks gRPC.

pub mod api;
pub mod audit;
pub mod backup;
pub mod broker;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod identity;
pub mod incident;
pub mod limits;
pub mod notify;
pub mod policy;
pub mod process;
pub mod rotation;
pub mod server;
pub mod state;
pub mod store;
mod sys;
pub mod vault;

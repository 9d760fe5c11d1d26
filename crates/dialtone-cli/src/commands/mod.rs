//! The commands, one module per group. `id`, `register`, `verify` and `device link` (on a new
//! device) talk to the home and the directory directly; everything else is a client of the
//! running agent's local API (`client`, `call`).

use dialtone_agent::{Home, api::Client};
use dialtone_proto::Identifier;
use serde_json::Value;

use crate::exit::{Fail, Result, client_fail};

pub(crate) mod agent;
pub(crate) mod chat;
pub(crate) mod contacts;
pub(crate) mod devices;
pub(crate) mod identity;
pub(crate) mod messages;
pub(crate) mod status;

pub(crate) fn parse_identifier(s: &str) -> Result<Identifier> {
    Identifier::parse(s).map_err(|e| Fail::usage(e.to_string()))
}

pub(crate) async fn client(home: &Home) -> Result<Client> {
    Client::connect(&home.socket_path())
        .await
        .map_err(|e| client_fail(&e))
}

pub(crate) async fn call(home: &Home, method: &str, params: Value) -> Result<Value> {
    client(home)
        .await?
        .call(method, params)
        .await
        .map_err(|e| client_fail(&e))
}

//! Outputs: what the agent writes for other tools. One `Output` per file,
//! built from `outputs:` entries by [`from_config`].

mod database;
pub mod database_server;
mod identity;
mod kubernetes;
pub mod reload;

use crate::client::AuthChannel as Channel;
use async_trait::async_trait;
use sigil_proto::v1::auth_service_client::AuthServiceClient;

use crate::config::OutputConfig;
use crate::destination::{self, Destination};
use crate::storage::StoredCredential;

/// What an output needs to produce its artifacts.
pub struct OutputContext<'a> {
    pub client: AuthServiceClient<Channel>,
    pub credential: &'a StoredCredential,
    /// The agent's auth servers, in order.
    pub auth_servers: &'a [crate::client::ServerAddr],
    pub ttl: std::time::Duration,
}

#[async_trait]
pub trait Output: Send + Sync {
    fn describe(&self) -> String;
    fn destination(&self) -> &dyn Destination;
    /// Obtain fresh credentials and write them.
    async fn generate(&self, ctx: OutputContext<'_>) -> anyhow::Result<()>;
    /// Run after every successful [`Output::generate`] (`reload_command`).
    fn reload_command(&self) -> &[String];
}

pub fn from_config(o: &OutputConfig) -> anyhow::Result<Box<dyn Output>> {
    let dest = destination::from_config(&o.destination)?;
    match o.kind.as_str() {
        "identity" => Ok(Box::new(identity::IdentityOutput::new(
            dest,
            o.destination.path.clone(),
            o.reload_command.clone(),
        ))),
        "ssh-host" => Ok(Box::new(crate::ssh_host::SshHostOutput::from_config(o)?)),
        "kubernetes" => Ok(Box::new(kubernetes::KubernetesOutput::from_config(
            o, dest,
        )?)),
        "database" => Ok(Box::new(database::DatabaseOutput::from_config(o)?)),
        "database-server" => Ok(Box::new(
            database_server::DatabaseServerOutput::from_config(o)?,
        )),
        other => anyhow::bail!("output type {other:?} is not known"),
    }
}

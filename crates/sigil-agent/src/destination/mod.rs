//! Where outputs write their artifacts. One `Destination` per file.

mod directory;

use crate::config;

pub use directory::DirectoryDestination;

pub trait Destination: Send + Sync {
    /// For logs and errors.
    fn describe(&self) -> String;
    /// Fail early (before any network call) if artifacts cannot be written.
    fn check_writable(&self) -> anyhow::Result<()>;
    /// Write one artifact atomically; `secret` artifacts are owner-only.
    fn write(&self, name: &str, data: &[u8], secret: bool) -> anyhow::Result<()>;
    /// Read an artifact written before (`None` if absent).
    fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Remove an artifact that no longer applies; absent is fine.
    fn remove(&self, name: &str) -> anyhow::Result<()>;
}

pub fn from_config(d: &config::Destination) -> anyhow::Result<Box<dyn Destination>> {
    match d.kind.as_str() {
        "directory" => {
            let files = config::destination::settings("destination", d)?;
            Ok(Box::new(DirectoryDestination::new(&d.path, files)))
        }
        other => anyhow::bail!("destination type {other:?} is not supported; use `directory`"),
    }
}

//! Connecting the admin client: locally over the owner-only `DIR/admin.sock`, or
//! remotely with mutual TLS using an agent-written identity file.

use crate::cli::GlobalArgs;
use crate::error::CliError;
use sigil_proto::v1::admin_service_client::AdminServiceClient;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint};

/// The admin API client used by every admin verb.
pub type AdminClient = AdminServiceClient<Channel>;

/// File name of the admin socket inside the data dir.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Where the admin verbs should connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The Unix socket in this data dir.
    Local(PathBuf),
    /// mTLS to `auth_server` (else the servers in the file) with this identity file.
    Remote {
        /// HOST:PORT, or several separated by commas, tried in order.
        auth_server: Option<String>,
        /// Identity file.
        identity: PathBuf,
    },
}

/// Chooses the connection from the global options. An identity file means remote
/// (it is only useful for that; it names the agent's auth servers, which
/// --auth-server overrides); otherwise the data dir.
pub fn target(global: &GlobalArgs) -> Result<Target, CliError> {
    match (&global.auth_server, &global.identity, &global.data_dir) {
        (server, Some(identity), _) => Ok(Target::Remote {
            auth_server: server.clone(),
            identity: identity.clone(),
        }),
        (_, None, Some(dir)) => Ok(Target::Local(dir.clone())),
        (Some(_), None, None) => Err(CliError::usage(
            "--auth-server needs --identity FILE for admin commands (an identity file written by \
             an agent's `identity` output), or use --data-dir DIR on the auth host",
        )),
        (None, None, None) => Err(CliError::usage(
            "no auth service given: use --data-dir DIR on the auth host (talks to DIR/admin.sock) \
             or --auth-server HOST:PORT --identity FILE",
        )),
    }
}

/// Connects the admin client as the global options say.
pub async fn connect(global: &GlobalArgs) -> anyhow::Result<AdminClient> {
    let channel = match target(global)? {
        Target::Local(dir) => local_channel(&dir).await?,
        Target::Remote {
            auth_server,
            identity,
        } => sigil_agent::client::admin_channel(auth_server.as_deref(), &identity).await?,
    };
    Ok(AdminServiceClient::new(channel))
}

/// Connects to `DIR/admin.sock`.
pub async fn local_channel(data_dir: &Path) -> anyhow::Result<Channel> {
    let path = data_dir.join(ADMIN_SOCKET);
    // Probe once with a plain connect: tonic wraps connector errors in an opaque
    // transport error, and the two common failures need specific advice.
    if let Err(e) = tokio::net::UnixStream::connect(&path).await {
        return Err(socket_error(data_dir, &path, &e).into());
    }
    let endpoint = Endpoint::from_static("http://localhost");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| {
            CliError::unavailable(format!(
                "cannot talk to the auth service on {}: {e}",
                data_dir.join(ADMIN_SOCKET).display()
            ))
        })?;
    Ok(channel)
}

/// A specific, actionable error for a failed connect to the admin socket.
pub fn socket_error(data_dir: &Path, path: &Path, e: &std::io::Error) -> CliError {
    let dir = data_dir.display();
    let sock = path.display();
    match e.kind() {
        ErrorKind::NotFound => CliError::unavailable(format!(
            "no auth service running with data dir {dir} ({sock} not found): start it with \
             `sigil auth start --data-dir {dir} ...` or use --auth-server/--identity"
        )),
        ErrorKind::PermissionDenied => CliError::denied(format!(
            "permission denied on {sock}: the admin socket is owner-only; run this command as \
             the owner of {dir} (the user running `sigil auth start`)"
        )),
        ErrorKind::ConnectionRefused => CliError::unavailable(format!(
            "no auth service is accepting connections on {sock} (stale socket?): start it with \
             `sigil auth start --data-dir {dir} ...`"
        )),
        _ => CliError::unavailable(format!("cannot connect to {sock}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    fn g(data_dir: Option<&str>, server: Option<&str>, identity: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            data_dir: data_dir.map(PathBuf::from),
            auth_server: server.map(str::to_string),
            identity: identity.map(PathBuf::from),
        }
    }

    #[test]
    fn target_selection() {
        assert_eq!(
            target(&g(Some("/d"), None, None)),
            Ok(Target::Local("/d".into()))
        );
        assert_eq!(
            target(&g(Some("/d"), Some("h:1"), Some("/id"))),
            Ok(Target::Remote {
                auth_server: Some("h:1".into()),
                identity: "/id".into()
            })
        );
        assert_eq!(
            target(&g(None, Some("h:1"), None)).unwrap_err().failure,
            Failure::Usage
        );
        // The identity file names the servers itself.
        assert_eq!(
            target(&g(None, None, Some("/id"))),
            Ok(Target::Remote {
                auth_server: None,
                identity: "/id".into()
            })
        );
        assert_eq!(
            target(&g(None, None, None)).unwrap_err().failure,
            Failure::Usage
        );
    }

    #[tokio::test]
    async fn missing_socket_says_how_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = local_channel(dir.path()).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no auth service running with data dir"),
            "{msg}"
        );
        assert!(msg.contains("admin.sock not found"), "{msg}");
        assert!(msg.contains("sigil auth start --data-dir"), "{msg}");
        assert_eq!(crate::error::exit_code(&err), 4);
    }

    #[test]
    fn permission_denied_is_explained() {
        let e = std::io::Error::from(ErrorKind::PermissionDenied);
        let err = socket_error(Path::new("/d"), Path::new("/d/admin.sock"), &e);
        assert_eq!(err.failure, Failure::Denied);
        assert!(err.message.contains("owner-only"), "{}", err.message);
    }

    #[tokio::test]
    async fn stale_socket_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_SOCKET);
        // Bind and drop: the socket file stays but nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = local_channel(dir.path()).await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 4, "{err}");
    }
}

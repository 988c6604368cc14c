//! Command-line structure (clap derive). The command names, flags and their
//! meanings are a fixed interface used by scripts and the end-to-end tests.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Shown by `sigil --help`; documents the exit codes (kept in sync with
/// `EXIT_CODES.md` and [`crate::error::Failure`]).
pub const LONG_ABOUT: &str = "\
Sigil gives machines and workloads short-lived, attested identities.

Servers:
  sigil auth start   run the auth service (CA, policy, audit, admin API)
  sigil agent start  run the agent that joins and keeps credentials fresh

Admin verbs talk to the auth service either locally through DIR/admin.sock
(--data-dir DIR, on the auth host, as the data dir's owner) or remotely with
mutual TLS (--auth-server HOST:PORT --identity FILE, an identity file written by
an agent's `identity` output).

Exit codes:
  0  success
  1  other error (internal error, audit log broken, unexpected failure)
  2  bad input: usage error, invalid file or flag, unknown kind, resource
     not found or already exists, failed precondition
  3  permission denied or not authenticated; `workload-identity issue`: the
     identity was not issued; `workload-identity test`: the workload would be
     denied or the identity's template fails
  4  auth service unavailable (not running, unreachable, socket missing)";

/// The `sigil` command line.
#[derive(Parser, Debug)]
#[command(name = "sigil", version, about = "Sigil machine identity: auth service, agent and admin CLI", long_about = LONG_ABOUT)]
pub struct Cli {
    /// Connection options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// True for the long-running servers (`auth start`, `agent start`), which log at
    /// `info` by default; admin verbs log at `warn` so their output stays clean.
    pub fn is_server(&self) -> bool {
        matches!(
            self.command,
            Command::Auth(_) | Command::Agent(_) | Command::Proxy(_)
        )
    }

    pub fn is_agent(&self) -> bool {
        matches!(self.command, Command::Agent(_))
    }
}

/// Options accepted anywhere on the command line.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// The auth service's data directory. `auth start`: where its state lives.
    /// Admin verbs: talk to the service through DIR/admin.sock.
    #[arg(long, global = true, env = "SIGIL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the auth service; several, comma-separated, are tried in order.
    /// `agent start`: where to join. Admin verbs: connect with mutual TLS (needs
    /// --identity; without this flag, the servers the identity file names).
    #[arg(
        long,
        global = true,
        env = "SIGIL_AUTH_SERVER",
        value_name = "HOST:PORT"
    )]
    pub auth_server: Option<String>,
    /// Identity file (written by an agent's `identity` output) for remote admin access.
    #[arg(long, global = true, env = "SIGIL_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// Top-level subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The auth service.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// The agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The application access proxy (mTLS, per-request RBAC, signed identity JWT).
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Create resources from a YAML or JSON file (one or several documents).
    Create(CreateArgs),
    /// Show resources: `sigil get roles`, `sigil get role/NAME -o yaml`.
    Get(GetArgs),
    /// Remove a resource: `sigil rm role/NAME`.
    Rm(RmArgs),
    /// Manage bots (machine users).
    #[command(subcommand)]
    Bots(BotsCommand),
    /// Manage join tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage locks (cut a bot, instance, role, token, login, SPIFFE ID or database user off at once).
    #[command(subcommand)]
    Locks(LocksCommand),
    /// Query and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// SPIFFE workload identities: mint SVIDs for testing, explain rules, revoke X.509-SVIDs.
    #[command(subcommand)]
    WorkloadIdentity(WorkloadIdentityCommand),
    /// Show the cluster name, CA pin, CAs and resource counts.
    Status(StatusArgs),
    /// The cluster's CAs: `sigil ca export --type ssh-user` prints one's public key.
    #[command(subcommand)]
    Ca(crate::admin::ca::CaCommand),
    /// SSH helpers run by sshd on a host (see the `ssh-host` output).
    #[command(subcommand)]
    Ssh(crate::ssh::SshCommand),
    /// Kubernetes access: `sigil kube ls` lists the clusters you may reach.
    #[command(subcommand)]
    Kube(crate::admin::kube::KubeCommand),
    /// Databases: `sigil db ls` lists those the caller may reach.
    #[command(subcommand)]
    Db(crate::admin::db::DbCommand),
    /// The web console: `sigil admin login` prints a single-use link to it.
    #[command(subcommand)]
    Admin(crate::admin::web_login::AdminCommand),
}

/// Output format of most admin verbs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable text and tables.
    #[default]
    Text,
    /// JSON for scripts.
    Json,
}

/// Output format of `sigil get`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetFormat {
    /// A table (lists) or a summary.
    Text,
    /// JSON (a list is an array).
    Json,
    /// YAML (a list is several documents, ready for `sigil create -f`).
    Yaml,
}

/// `sigil auth ...`
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Run the auth service until SIGINT/SIGTERM. Needs --data-dir.
    Start(Box<AuthStartArgs>),
    /// Copy a stopped cluster's store into a new PostgreSQL database: every resource,
    /// CA and bot instance, and the audit log with its hashes unchanged.
    Migrate(AuthMigrateArgs),
}

/// `sigil auth migrate`
#[derive(Args, Debug, Clone)]
pub struct AuthMigrateArgs {
    /// The source: `sqlite:PATH` (the `sigil.db` in a stopped server's data dir).
    #[arg(long, value_name = "sqlite:PATH")]
    pub from: String,
    /// The target, an empty database: `postgres://USER@HOST[:PORT]/DB?sslmode=verify-full`.
    /// Put the password in PGPASSWORD or a passfile (~/.pgpass), not here.
    #[arg(long, value_name = "URL", env = "SIGIL_MIGRATE_TO")]
    pub to: String,
}

/// `sigil auth start`
#[derive(Args, Debug, Clone)]
pub struct AuthStartArgs {
    /// gRPC control plane (mutual TLS) listen address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Public HTTPS listen address (SPIFFE bundle, OIDC discovery, JWKS, health).
    #[arg(long, value_name = "ADDR:PORT")]
    pub public_listen: SocketAddr,
    /// Cluster name (trust domain); set on first start only.
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Extra DNS names or IPs for the auth service's TLS certificate (repeatable).
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Public HTTPS base URL (https://HOST[:PORT]) as relying parties reach it:
    /// the JWT-SVID issuer (`iss`) and the OIDC discovery address.
    /// Default: https://<--public-listen>.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Extra PEM CA certificates to trust for outbound HTTPS: OIDC issuers
    /// (self-hosted GitLab, GitHub Enterprise, a Kubernetes API) and STS.
    #[arg(long, value_name = "FILE")]
    pub outbound_ca_file: Option<PathBuf>,
    /// An STS endpoint `iam` joins may be forwarded to, https://HOST[:PORT]
    /// (repeatable). Default: AWS's global and regional STS endpoints.
    #[arg(long = "sts-endpoint", value_name = "URL")]
    pub sts_endpoints: Vec<String>,
    /// The key that signs audit checkpoints (created 0600 if missing). Default:
    /// audit-key.json in the data dir; in production keep it on another volume.
    #[arg(long, value_name = "FILE", env = "SIGIL_AUDIT_KEY_FILE")]
    pub audit_key: Option<PathBuf>,
    /// Where the cluster lives. Default: SQLite (sigil.db in the data dir). For several
    /// auth servers on one database: postgres://USER@HOST[:PORT]/DB?sslmode=verify-full
    /// (password from PGPASSWORD or a passfile, or the whole URL in SIGIL_STORE; never
    /// on the command line, where `ps` shows it).
    #[arg(long, value_name = "URL", env = "SIGIL_STORE")]
    pub store: Option<String>,
    /// The audit key is lost for good: start with a new one (remove DIR/audit-key.pub
    /// first) and record it as the cluster's. Checkpoints signed by the old key then
    /// fail `sigil audit verify`, and agents that pinned it refuse the servers until
    /// their audit-witness.json is removed. Audited as `audit.key_replaced`.
    #[arg(long)]
    pub new_audit_key: bool,
    /// Also serve the SPIFFE bundle in the `https_spiffe` profile on ADDR:PORT:
    /// TLS with the X.509-SVID spiffe://<cluster>/spiffe/bundle-endpoint, for
    /// peers (another Sigil, SPIRE) federating with this trust domain.
    #[arg(long, value_name = "ADDR:PORT")]
    pub spiffe_bundle_endpoint_listen: Option<SocketAddr>,
    /// Where the CA private keys live (default: in the database).
    #[command(flatten)]
    pub ca_keys: crate::ca_keys::CaKeyArgs,
    /// How long a bot instance is kept after its last credential expired (it
    /// can no longer renew by then); then it is removed. Its joins and renewals
    /// stay in the audit log.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub instance_retention: String,
    /// The public listener asks for an optional client certificate: the web
    /// console then offers a login with an identity output's certificate.
    /// Off by default: browsers may show a certificate picker to every visitor.
    #[arg(long)]
    pub web_client_certificates: bool,
}

/// `sigil proxy ...`
#[derive(Subcommand, Debug)]
pub enum ProxyCommand {
    /// Run the proxy: join as its bot, serve the apps its roles allow.
    Start(ProxyStartArgs),
}

/// `sigil proxy start --config proxy.yaml`.
#[derive(Args, Debug, Clone)]
pub struct ProxyStartArgs {
    /// Proxy YAML configuration file (README "Application access").
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `sigil agent ...`
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Run the agent: join, write outputs, keep them renewed.
    Start(AgentStartArgs),
}

/// `sigil agent start`: either --config FILE or the flags (with the global --auth-server).
#[derive(Args, Debug, Clone, Default)]
pub struct AgentStartArgs {
    /// Agent YAML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ca_pins", "join_method", "token", "token_path", "storage", "outputs", "credential_ttl", "renewal_interval"])]
    pub config: Option<PathBuf>,
    /// Join method (`token` by default; a delegated method uses its defaults,
    /// e.g. `github` reads the Actions ID-token variables, and --token names
    /// the token resource).
    #[arg(long, value_name = "METHOD")]
    pub join_method: Option<String>,
    /// Pin of the auth service's host CA, `sha256:HEX` (repeatable; from `sigil bots add`).
    #[arg(long = "ca-pin", value_name = "sha256:HEX")]
    pub ca_pins: Vec<String>,
    /// Join token (prefer --token-path or SIGIL_TOKEN: arguments are visible in `ps`).
    #[arg(
        long,
        env = "SIGIL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the join token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_path: Option<PathBuf>,
    /// Directory for the agent's own key and identity.
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Output, `identity:DIR` (repeatable).
    #[arg(long = "output", value_name = "TYPE:DIR")]
    pub outputs: Vec<String>,
    /// Join, write the outputs once and exit (CI).
    #[arg(long)]
    pub oneshot: bool,
    /// Lifetime of issued credentials, e.g. `1h`.
    #[arg(long, value_name = "DURATION")]
    pub credential_ttl: Option<String>,
    /// How often to renew, e.g. `20m`.
    #[arg(long, value_name = "DURATION")]
    pub renewal_interval: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub diag_addr: Option<String>,
}

/// `sigil create -f FILE`
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// YAML or JSON file with one or more resources; `-` reads stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Replace resources that already exist (upsert).
    #[arg(long)]
    pub force: bool,
}

/// `sigil get KIND[/NAME] [NAME]`
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// Kind (`roles`, `bots`, `tokens`, `locks`, `bot_instances`, `workload_identities`,
    /// `workload_identity_x509_revocations` alias `revocations`, `kubernetes_clusters`,
    /// singular too) or KIND/NAME. `kubernetes_clusters` lists those you may reach,
    /// as `sigil kube ls` (`-o yaml`: the resources).
    pub target: String,
    /// Name, as an alternative to KIND/NAME.
    pub name: Option<String>,
    /// Output format (default: text for lists, yaml for one resource).
    #[arg(short = 'o', long = "output", alias = "format", value_enum)]
    pub output: Option<GetFormat>,
}

/// `sigil rm KIND/NAME`
#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    /// KIND/NAME, e.g. `role/deployer`.
    pub target: String,
    /// Name, as an alternative to KIND/NAME.
    pub name: Option<String>,
}

/// `--format` shared by the admin verbs.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `sigil bots ...`
#[derive(Subcommand, Debug)]
pub enum BotsCommand {
    /// Create a bot and a join token for it.
    Add(BotsAddArgs),
    /// List bots.
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Remove a bot.
    #[command(alias = "remove")]
    Rm(NameArg),
    /// Change a bot's roles.
    Update(BotsUpdateArgs),
    /// Bot instances (agent installations).
    #[command(subcommand)]
    Instances(InstancesCommand),
}

/// A single positional name.
#[derive(Args, Debug, Clone)]
pub struct NameArg {
    /// Name (or id).
    pub name: String,
}

/// `sigil bots add`
#[derive(Args, Debug, Clone)]
pub struct BotsAddArgs {
    /// Bot name.
    pub name: String,
    /// Roles, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "ROLE,...")]
    pub roles: Vec<String>,
    /// Lifetime of the join token, e.g. `15m` (server default if unset).
    #[arg(long, value_name = "DURATION")]
    pub token_ttl: Option<String>,
    /// Upper bound on the bot's credential TTL, e.g. `12h`.
    #[arg(long, value_name = "DURATION")]
    pub max_ttl: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil bots update`
#[derive(Args, Debug, Clone)]
pub struct BotsUpdateArgs {
    /// Bot name.
    pub name: String,
    /// Replace the bot's roles, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "ROLE,...")]
    pub set_roles: Vec<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil bots instances ...`
#[derive(Subcommand, Debug)]
pub enum InstancesCommand {
    /// List bot instances, optionally of one bot.
    #[command(alias = "list")]
    Ls(InstancesLsArgs),
}

/// `sigil bots instances ls`
#[derive(Args, Debug, Clone)]
pub struct InstancesLsArgs {
    /// Only instances of this bot.
    pub bot: Option<String>,
    /// At most this many (default: all, read page by page). With more left,
    /// the command prints on stderr the `--page-token` that continues.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Continue a listing where a `--limit` one stopped.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil tokens ...`
#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a join token for a bot.
    Add(Box<TokensAddArgs>),
    /// List join tokens (text output shows only a prefix of each token).
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Remove a join token.
    #[command(alias = "remove")]
    Rm(NameArg),
    /// Explain whether given claims would pass a token's allow rules
    /// (exit 0 when accepted, 3 when denied).
    Test(TokensTestArgs),
}

/// `sigil tokens test`
#[derive(Args, Debug, Clone)]
pub struct TokensTestArgs {
    /// The token's name.
    pub name: String,
    /// JSON file of claims (`-` for stdin): an ID token's payload for the
    /// OIDC methods, `{"aws_account","aws_arn"}` for iam,
    /// `{"ek_public_hash","ek_certificate_serial"}` for tpm.
    #[arg(long, value_name = "FILE")]
    pub claims: PathBuf,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil tokens add`
#[derive(Args, Debug, Clone)]
pub struct TokensAddArgs {
    /// The bot the token lets join.
    #[arg(long, value_name = "NAME")]
    pub bot: String,
    /// Token lifetime, e.g. `15m` (default: 15m for `token`; no expiry for
    /// the other methods, whose tokens hold rules, not secrets).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Join method: token (single-use secret), bound_keypair, kubernetes,
    /// github, gitlab, oidc, iam or tpm.
    #[arg(long, default_value = "token", value_name = "METHOD")]
    pub join_method: String,
    /// Token name (every method but `token`, whose name is a generated secret).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// An allow entry, `field=glob,field=glob` (repeatable; entries are OR'd,
    /// fields inside one entry AND'd), e.g. `repository=acme/infra,ref=refs/heads/main`.
    #[arg(long = "allow", value_name = "FIELD=GLOB,...")]
    pub allow: Vec<String>,
    /// github: GitHub Enterprise Server host (`ghe.example.com[:PORT]`).
    #[arg(long, value_name = "HOST")]
    pub enterprise_server_host: Option<String>,
    /// github: GitHub Enterprise Cloud slug of a customised issuer.
    #[arg(long, value_name = "SLUG")]
    pub enterprise_slug: Option<String>,
    /// gitlab: self-hosted GitLab host (`gitlab.example.com[:PORT]`).
    #[arg(long, value_name = "HOST")]
    pub domain: Option<String>,
    /// oidc, kubernetes: the issuer URL (`https://...`).
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// oidc, kubernetes: the expected audience (default: the cluster name).
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// kubernetes: file with the cluster's JWKS (`kubectl get --raw /openid/v1/jwks`).
    #[arg(long, value_name = "FILE")]
    pub static_jwks_file: Option<PathBuf>,
    /// bound_keypair: file with the agent's OpenSSH public key (else a
    /// registration secret is generated and shown once).
    #[arg(long, value_name = "FILE")]
    pub initial_public_key_file: Option<PathBuf>,
    /// bound_keypair: how many joins may create a new bot instance (default 1).
    #[arg(long, value_name = "N")]
    pub recovery_limit: Option<u32>,
    /// bound_keypair: make the agent rotate its key at its next join after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub rotate_after: Option<String>,
    /// tpm: PEM file of a CA that must have issued the TPM's EK certificate (repeatable).
    #[arg(long = "ekcert-ca-file", value_name = "FILE")]
    pub ekcert_ca_files: Vec<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil locks ...`
#[derive(Subcommand, Debug)]
pub enum LocksCommand {
    /// Lock a target: no new credential is issued to it.
    Add(LocksAddArgs),
    /// List locks.
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Remove a lock by id.
    #[command(alias = "remove")]
    Rm(NameArg),
}

/// What a lock applies to: exactly one of these.
#[derive(Args, Debug, Clone, Default)]
#[group(required = true, multiple = false)]
pub struct LockTargetArgs {
    /// A bot by name.
    #[arg(long, value_name = "NAME")]
    pub bot: Option<String>,
    /// A bot instance by id.
    #[arg(long, value_name = "ID")]
    pub bot_instance: Option<String>,
    /// Everyone holding a role.
    #[arg(long, value_name = "NAME")]
    pub role: Option<String>,
    /// A join token.
    #[arg(long, value_name = "NAME")]
    pub token: Option<String>,
    /// An SSH login.
    #[arg(long, value_name = "NAME")]
    pub login: Option<String>,
    /// A SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub spiffe_id: Option<String>,
    /// A database user: its certificates go on every database's CRL.
    #[arg(long, value_name = "NAME")]
    pub db_user: Option<String>,
}

impl LockTargetArgs {
    /// The `(target_kind, target_value)` pair for `AddLockRequest`.
    pub fn target(&self) -> Option<(&'static str, &str)> {
        [
            ("bot", &self.bot),
            ("bot_instance", &self.bot_instance),
            ("role", &self.role),
            ("token", &self.token),
            ("login", &self.login),
            ("spiffe_id", &self.spiffe_id),
            ("db_user", &self.db_user),
        ]
        .into_iter()
        .find_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// `sigil locks add`
#[derive(Args, Debug, Clone)]
pub struct LocksAddArgs {
    /// The target.
    #[command(flatten)]
    pub target: LockTargetArgs,
    /// Lock lifetime, e.g. `1h` (forever if unset).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Why; shown to the locked party.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Query audit events (json: one event per line).
    #[command(alias = "list")]
    Ls(AuditLsArgs),
    /// Check the audit hash chain and its signed checkpoints (and a head recorded earlier).
    Verify(AuditVerifyArgs),
    /// Sign and print a checkpoint of the log's head; keep it to verify against later.
    Checkpoint(AuditCheckpointArgs),
}

/// `sigil audit verify`
#[derive(Args, Debug, Clone)]
pub struct AuditVerifyArgs {
    /// A head recorded earlier, SEQ:HASH (as `sigil audit verify` or
    /// `sigil audit checkpoint` printed it): the log must still hold it.
    #[arg(long, value_name = "SEQ:HASH", conflicts_with = "checkpoint")]
    pub head: Option<String>,
    /// A checkpoint file saved by `sigil audit checkpoint --out FILE`: its
    /// signature is checked, then the log must still hold its head.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil audit checkpoint`
#[derive(Args, Debug, Clone)]
pub struct AuditCheckpointArgs {
    /// Also save the signed checkpoint to FILE (for `sigil audit verify --checkpoint`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil audit ls`
#[derive(Args, Debug, Clone)]
pub struct AuditLsArgs {
    /// Only events newer than this, e.g. `1h`.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// At most this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil status`
#[derive(Args, Debug, Clone, Copy)]
pub struct StatusArgs {
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil workload-identity ...`
#[derive(Subcommand, Debug)]
pub enum WorkloadIdentityCommand {
    /// Mint an X.509-SVID (and optionally a JWT-SVID) for testing and write it into a
    /// directory. Exit 3 (and nothing written) if the identity is not issued.
    Issue(WorkloadIdentityIssueArgs),
    /// Explain whether a workload with these attributes would get the identity, and
    /// which SPIFFE ID.
    ///
    /// Exit codes: 0 allowed; 3 denied by the rules or the identity's template fails
    /// (missing or invalid attribute); 2 bad input or unknown identity.
    Test(WorkloadIdentityTestArgs),
    /// Revoked X.509-SVIDs, by serial: listed in the CRL and no longer served by agents.
    #[command(subcommand)]
    Revocations(RevocationsCommand),
}

/// `sigil workload-identity issue`
#[derive(Args, Debug, Clone)]
pub struct WorkloadIdentityIssueArgs {
    /// Workload identity name.
    pub name: String,
    /// Directory for svid.pem, svid.key, bundle.pem, svid-crl.pem (if anything is
    /// revoked) and jwt_svid (with --jwt-audience); created mode 0700 if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Attribute for the identity's templates and rules, KEY=VALUE, e.g.
    /// `workload.unix.uid=1000` (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
    /// Lifetime of the SVIDs (X.509 and JWT), e.g. `1h` (the identity's or the server
    /// default if unset).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Also mint a JWT-SVID for this audience (repeatable; one token for all).
    #[arg(long = "jwt-audience", value_name = "AUD")]
    pub jwt_audiences: Vec<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil workload-identity test`
#[derive(Args, Debug, Clone)]
pub struct WorkloadIdentityTestArgs {
    /// Workload identity name.
    pub name: String,
    /// Attribute of the workload, KEY=VALUE, e.g. `workload.unix.uid=1000` (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", required = true)]
    pub attrs: Vec<String>,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// `sigil workload-identity revocations ...`
#[derive(Subcommand, Debug)]
pub enum RevocationsCommand {
    /// Revoke an X.509-SVID by its serial number.
    Add(RevocationsAddArgs),
    /// List revoked serials.
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Remove a revocation (the serial is trusted again).
    #[command(alias = "remove")]
    Rm(SerialArg),
}

/// `sigil workload-identity revocations add`
#[derive(Args, Debug, Clone)]
pub struct RevocationsAddArgs {
    /// Serial number in hex as `openssl x509 -noout -serial -in svid.pem` prints it;
    /// colons, `0x`, upper case and leading zeros are fine.
    #[arg(long, value_name = "HEX")]
    pub serial: String,
    /// Why it is revoked (one line, at most 256 characters).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Output format.
    #[command(flatten)]
    pub format: FormatArg,
}

/// A certificate serial number.
#[derive(Args, Debug, Clone)]
pub struct SerialArg {
    /// Serial number in hex (colons, `0x`, upper case and leading zeros are fine).
    pub serial: String,
}

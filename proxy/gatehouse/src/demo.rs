//! `gatehouse demo`: a throwaway PostgreSQL with fake customer data, the example policies, and
//! a gateway in front of it, with ready-to-paste `psql` commands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gatehouse_identity::scram::ScramVerifier;

use crate::pgcluster::{TempCluster, hex_token};

/// Seed SQL: a small schema with fake (generated) customer data.
pub const SEED_SQL: &str = r#"
-- Appends the Luhn check digit, so the fake card numbers are well-formed ones.
CREATE FUNCTION luhn_complete(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT p || ((10 - sum(CASE WHEN (length(p) - pos) % 2 = 0
                              THEN (CASE WHEN d * 2 > 9 THEN d * 2 - 9 ELSE d * 2 END)
                              ELSE d END) % 10) % 10)::text
  FROM (SELECT pos, substr(p, pos, 1)::int AS d FROM generate_series(1, length(p)) AS pos) AS s
$$;
CREATE TABLE customers (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    phone       text,
    card_number text,
    ssn         text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (id, name, email, phone, card_number, ssn)
SELECT i,
       'Customer ' || i,
       'customer' || i || '@example.com',
       '+1-202-555-' || lpad((i % 10000)::text, 4, '0'),
       regexp_replace(luhn_complete('4' || lpad((11111111111 + i * 7919)::text, 14, '0')), '(\d{4})(?=\d)', '\1 ', 'g'),
       lpad((100 + i % 600)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0') || '-' || lpad((1000 + i)::text, 4, '0')
FROM generate_series(1, 200) AS i;
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    amount      numeric(10,2) NOT NULL,
    status      text NOT NULL
);
INSERT INTO orders SELECT i, 1 + i % 200, (i * 7 % 1000) / 10.0, (ARRAY['new','paid','shipped'])[1 + i % 3]
FROM generate_series(1, 1000) AS i;
"#;

/// Identities and secrets of a demo/test deployment.
pub struct DemoSetup {
    pub cluster: TempCluster,
    pub config_path: PathBuf,
    pub agent_key: String,
    pub human_key: String,
    pub user_key: String,
    /// Key of `dana`, a second DBA: she can approve the agent's held statements (the agent acts
    /// for alice, who may therefore not approve them).
    pub approver_key: String,
    pub log_dir: PathBuf,
    /// The checkpoint signing key (PKCS#8 PEM) and its public half (SPKI PEM).
    pub audit_private_key: PathBuf,
    pub audit_public_key: PathBuf,
}

/// Options for [`setup`].
pub struct SetupOptions<'a> {
    pub dir: &'a Path,
    pub policies: &'a Path,
    pub listen: &'a str,
    /// Extra TOML appended to the generated config. `@PORT@`, `@PASSWORD_FILE@`, `@CA_FILE@`
    /// and `@PLUGINS@` are replaced with the cluster's port, the `app` role's password file, the
    /// cluster's CA and the plugin directory, so extra targets can reach the same database.
    pub extra: &'a str,
    pub durability: &'a str,
    /// Directory with the built plugins (`pii-mask.wasm`, `sql-guard.wasm`): when given, target
    /// `app` masks PII in results and guards statements with them; `app_staging` has none.
    pub plugins: Option<&'a Path>,
}

/// Start a cluster, seed it, and write a gateway config for it.
pub fn setup(o: &SetupOptions<'_>) -> Result<DemoSetup> {
    std::fs::create_dir_all(o.dir)?;
    let cluster = TempCluster::start(&o.dir.join("pg"))?;
    let app_pw = format!("app-{}", hex_token());
    cluster.psql("postgres", "CREATE DATABASE app")?;
    cluster.psql(
        "postgres",
        &format!(
            "CREATE ROLE gatehouse_app LOGIN PASSWORD '{app_pw}'; ALTER DATABASE app OWNER TO gatehouse_app"
        ),
    )?;
    cluster.psql("app", "ALTER SCHEMA public OWNER TO gatehouse_app")?;
    cluster.psql("app", &format!("SET ROLE gatehouse_app; {SEED_SQL}"))?;

    let gw = o.dir.join("gateway");
    std::fs::create_dir_all(&gw)?;
    let (_, cert, key) = crate::pgcluster::write_test_pki(&gw)?;
    let pw_file = gw.join("app.password");
    std::fs::write(&pw_file, &app_pw)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let agent_key = format!("gh_{}{}", hex_token(), hex_token());
    let human_key = format!("gh_{}{}", hex_token(), hex_token());
    let user_key = format!("gh_{}{}", hex_token(), hex_token());
    let approver_key = format!("gh_{}{}", hex_token(), hex_token());
    let log_dir = o.dir.join("log");
    let (audit_private, audit_public, _) =
        gatehouse_recorder::CheckpointSigner::generate().map_err(anyhow::Error::msg)?;
    let audit_private_key = gw.join("audit-signing.pem");
    let audit_public_key = gw.join("audit-signing.pub.pem");
    std::fs::write(&audit_private_key, audit_private)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&audit_private_key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(&audit_public_key, audit_public)?;
    let policies = std::fs::canonicalize(o.policies)
        .with_context(|| format!("policy directory `{}` not found", o.policies.display()))?;
    let (plugin_defs, app_plugins) = match o.plugins {
        None => (String::new(), String::new()),
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("plugin directory `{}` not found", dir.display()))?;
            (
                format!(
                    r#"
# Masks PII in results: cards, SSNs and phones keep their last 4, e-mails become a keyed
# token (the same address always gives the same token, so joins and GROUP BY still work).
[[plugin]]
name = "pii-mask"
path = "{pii}"
[plugin.config]
strategy = "partial"
strategies = {{ email = "hash" }}
hash_key = "{key}"
columns = {{ ssn = "us-ssn" }}

# Refuses UPDATE/DELETE without WHERE, TRUNCATE, DROP and ALTER SYSTEM.
[[plugin]]
name = "sql-guard"
path = "{guard}"
"#,
                    pii = dir.join("pii-mask.wasm").display(),
                    guard = dir.join("sql-guard.wasm").display(),
                    key = hex_token(),
                ),
                r#"plugins = ["sql-guard", "pii-mask"]"#.to_string(),
            )
        }
    };
    let config = format!(
        r#"# Generated by `gatehouse demo`.
[gateway]
shutdown_grace_secs = 2

[policy]
dir = "{policies}"
reload_interval_ms = 500

[recorder]
dir = "{log}"
durability = "{durability}"

# Signed checkpoints of the hash chain (verify with {audit_pub}).
[recorder.checkpoints]
key = {{ file = "{audit_key}" }}
every_events = 1000
every_secs = 5

[[listener]]
name = "pg"
protocol = "postgres"
address = "{listen}"
tls_cert = "{cert}"
tls_key = "{key}"
plaintext = "loopback"

[[identity]]
name = "ai-agent"
kind = "agent"
groups = ["agents"]
key_verifier = "{agent}"
on_behalf_of = "alice"

[[identity]]
name = "alice"
kind = "user"
groups = ["dba"]
key_verifier = "{human}"
attrs = {{ email = "alice@example.com" }}

[[identity]]
name = "bob"
kind = "user"
groups = ["engineering"]
key_verifier = "{user}"

[[identity]]
name = "dana"
kind = "user"
groups = ["dba"]
key_verifier = "{approver}"

# Approvals of held statements (`gatehouse approvals`); alice and dana are DBAs.
[admin]
listen = "127.0.0.1:0"
admins = ["security"]
auditors = ["audit"]

{plugin_defs}
[[target]]
name = "app"
kind = "postgres"
tags = {{ env = "prod" }}
{app_plugins}
[target.postgres]
host = "127.0.0.1"
port = {port}
database = "app"
user = "gatehouse_app"
password = {{ file = "{pw}" }}
tls = "verify-full"
ca_file = "{ca}"

[[target]]
name = "app_staging"
kind = "postgres"
tags = {{ env = "staging" }}
[target.postgres]
host = "127.0.0.1"
port = {port}
database = "app"
user = "gatehouse_app"
password = {{ file = "{pw}" }}
tls = "verify-full"
ca_file = "{ca}"
{extra}"#,
        policies = policies.display(),
        log = log_dir.display(),
        durability = o.durability,
        audit_key = audit_private_key.display(),
        audit_pub = audit_public_key.display(),
        listen = o.listen,
        cert = cert.display(),
        key = key.display(),
        agent = ScramVerifier::generate(&agent_key),
        human = ScramVerifier::generate(&human_key),
        user = ScramVerifier::generate(&user_key),
        approver = ScramVerifier::generate(&approver_key),
        port = cluster.port,
        pw = pw_file.display(),
        ca = cluster.ca_file.display(),
        extra = o
            .extra
            .replace("@PORT@", &cluster.port.to_string())
            .replace("@PASSWORD_FILE@", &pw_file.display().to_string())
            .replace("@CA_FILE@", &cluster.ca_file.display().to_string())
            .replace(
                "@PLUGINS@",
                &o.plugins.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        plugin_defs = plugin_defs,
        app_plugins = app_plugins,
    );
    let config_path = gw.join("gatehouse.toml");
    std::fs::write(&config_path, config)?;
    Ok(DemoSetup {
        cluster,
        config_path,
        agent_key,
        human_key,
        user_key,
        approver_key,
        log_dir,
        audit_private_key,
        audit_public_key,
    })
}

/// Print how to use the running demo.
pub fn banner(
    s: &DemoSetup,
    addr: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    exe: &str,
) -> String {
    let (host, port) = (addr.ip(), addr.port());
    let admin = admin
        .map(|a| a.to_string())
        .unwrap_or_else(|| "(no admin API)".into());
    format!(
        r#"
Gatehouse demo is running.
  PostgreSQL (throwaway) on 127.0.0.1:{pgport}; Gatehouse on {addr}; audit log in {log}

An AI agent (read-only on prod; DDL, unknown statements and server-file access denied;
SSNs, card numbers and customer contacts masked by policies/masking.cedar):
  PGPASSWORD='{agent}' psql "host={host} port={port} user=ai-agent dbname=app sslmode=require"
    try:  SELECT id, name, email, card_number, ssn FROM customers LIMIT 5;
          SELECT upper(ssn) FROM customers LIMIT 3;   -- computed from a masked column: masked
          DELETE FROM customers;            -- denied, names the policy
          DROP TABLE orders;                -- denied
          UPDATE orders SET status = 'shipped' WHERE id = 1;
                                            -- held until a DBA approves it (the session waits,
                                            -- other sessions go on); Ctrl-C withdraws it
A DBA approves or denies held statements (not alice: the agent acts for her):
  export GATEHOUSE_ADMIN_URL=http://{admin} GATEHOUSE_USER=dana GATEHOUSE_KEY='{approver}'
  {exe} approvals list
  {exe} approvals show REQUEST_ID
  {exe} approvals approve REQUEST_ID --comment "ticket OPS-1"     # or: approvals deny …
A human DBA (everything allowed, everything recorded):
  PGPASSWORD='{human}' psql "host={host} port={port} user=alice dbname=app sslmode=require"
The same database tagged env=staging (agents may write there, with a WHERE):
  PGPASSWORD='{agent}' psql "host={host} port={port} user=ai-agent dbname=app_staging sslmode=require"

What happened, as an auditor sees it:
  {exe} audit sessions --log {log}
  {exe} audit show SESSION_ID --log {log}
  {exe} audit verify --log {log} --key {audit_pub}
  {exe} audit export --log {log} --from -1h --out evidence --sign-key {audit_key}
  {exe} audit verify --bundle evidence --key {audit_pub}

Config: {config}   (Ctrl-C stops the demo and removes the throwaway cluster)
"#,
        pgport = s.cluster.port,
        log = s.log_dir.display(),
        agent = s.agent_key,
        human = s.human_key,
        approver = s.approver_key,
        config = s.config_path.display(),
        audit_pub = s.audit_public_key.display(),
        audit_key = s.audit_private_key.display(),
    )
}

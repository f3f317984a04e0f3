//! The admin API over TLS (`[admin] tls_cert`/`tls_key`): the CLI verifies the certificate
//! against `GATEHOUSE_ADMIN_CA`, plain HTTP gets no answer, and an unknown CA is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use gatehouse::demo::DemoSetup;
use gatehouse_conformance::{Harness, Options, gatehouse_bin, http_get, output_text};

/// Serve the admin API with the listener's certificate (issued for 127.0.0.1 by the test CA).
fn admin_over_tls(setup: &DemoSetup) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&setup.config_path)?;
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no `{key}` in the demo config"))
    };
    let (cert, key) = (line("tls_cert")?, line("tls_key")?);
    let text = text.replacen("[admin]\n", &format!("[admin]\n{cert}\n{key}\n"), 1);
    std::fs::write(&setup.config_path, text)?;
    Ok(())
}

#[test]
fn the_admin_api_speaks_tls_and_the_cli_checks_its_certificate() {
    let h = Harness::start_with(Options {
        before_start: Some(&admin_over_tls),
        ..Options::default()
    })
    .unwrap();
    let admin = h.admin.unwrap();
    // The listener's certificate comes with its own test CA, beside it.
    let config = std::fs::read_to_string(&h.setup.config_path).unwrap();
    let cert = config
        .lines()
        .find_map(|l| l.strip_prefix("tls_cert = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let ca = std::path::Path::new(&cert).with_file_name("ca.crt");
    let list = |url: String, ca: Option<&std::path::Path>| {
        let mut c = Command::new(gatehouse_bin());
        c.args(["approvals", "list", "--url", &url, "--user", "alice"])
            .env("GATEHOUSE_KEY", h.key("alice"))
            .env_remove("GATEHOUSE_TOKEN")
            .env_remove("GATEHOUSE_ADMIN_CA")
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            c.env("GATEHOUSE_ADMIN_CA", ca);
        }
        c.output().unwrap()
    };
    let out = list(format!("https://{admin}"), Some(&ca));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no approval requests"),
        "{}",
        output_text(&out)
    );
    // Without that CA (the Web PKI, or another CA) the certificate is not trusted.
    let out = list(format!("https://{admin}"), None);
    assert!(!out.status.success(), "{}", output_text(&out));
    let out = list(format!("https://{admin}"), Some(&h.setup.cluster.ca_file));
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("certificate"), "{}", output_text(&out));
    // Plain HTTP to a TLS port: no answer, no credentials accepted.
    assert!(
        http_get(admin, "/healthz").is_err(),
        "a plaintext request got an HTTP answer"
    );
    let out = list(format!("http://{admin}"), None);
    assert!(!out.status.success(), "{}", output_text(&out));
    // The CLI never sends credentials in the clear off this host, nor ignores a CA it was given.
    let out = list("http://gatehouse.invalid:9465".to_string(), None);
    assert!(
        output_text(&out).contains("in the clear"),
        "{}",
        output_text(&out)
    );
    let out = list(format!("http://{admin}"), Some(&ca));
    assert!(
        output_text(&out).contains("is not https"),
        "{}",
        output_text(&out)
    );
}

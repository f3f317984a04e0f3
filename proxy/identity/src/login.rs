//! `gatehouse login`: a human gets a token from their OpenID Provider with the OAuth 2.0 device
//! authorization grant (RFC 8628), for clients that cannot run a browser flow themselves
//! (`psql` in a terminal, an SSH session); or, where the provider has no device flow, with the
//! authorization code grant and PKCE (RFC 7636) redirecting to a one-shot listener on
//! 127.0.0.1 (RFC 8252 §7.3).
//!
//! The provider's endpoints come from discovery. The token handed to clients is the access
//! token when it is a JWT for the requested resource (RFC 8707 / RFC 9068; the gateway's
//! `audience` is that resource), else the ID token (the gateway's `audience` is then the
//! client id).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const MAX_RESPONSE: usize = 1 << 20;

/// What the user must do to authorize this device.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds between polls (default 5, as RFC 8628 says).
    #[serde(default)]
    pub interval: Option<u64>,
}

/// The token to present, and what it says about its holder.
#[derive(Debug, Clone)]
pub struct LoginToken {
    pub token: String,
    /// `access_token` or `id_token`.
    pub kind: &'static str,
    /// Claims of the token (not verified here: the gateway verifies them).
    pub claims: serde_json::Map<String, Value>,
}

impl LoginToken {
    /// The token's expiry (Unix seconds), if it says.
    pub fn expires_at(&self) -> Option<i64> {
        self.claims.get("exp").and_then(Value::as_i64)
    }

    /// A claim as a string.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

pub struct DeviceLogin {
    pub issuer: String,
    pub client_id: String,
    pub scope: String,
    pub resource: Option<String>,
    http: reqwest::Client,
    device_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: String,
}

/// An authorization code flow waiting for the browser to come back.
pub struct CodeLogin {
    /// Open this in a browser.
    pub url: String,
    listener: tokio::net::TcpListener,
    redirect_uri: String,
    state: String,
    verifier: String,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl DeviceLogin {
    /// Discover the provider's device and token endpoints.
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        scope: &str,
        resource: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<DeviceLogin, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (status, body) = fetch(http.get(&url)).await?;
        if status != 200 {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| format!("discovery document: {e}"))?;
        if d.issuer != issuer {
            return Err(format!("discovery names issuer `{}`, not `{issuer}`", d.issuer));
        }
        if d.device_authorization_endpoint.is_none() && d.authorization_endpoint.is_none() {
            return Err(format!(
                "`{issuer}` offers neither a device nor an authorization endpoint"
            ));
        }
        Ok(DeviceLogin {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            resource: resource.map(str::to_string),
            http,
            device_endpoint: d.device_authorization_endpoint,
            authorization_endpoint: d.authorization_endpoint,
            token_endpoint: d.token_endpoint,
        })
    }

    /// Whether the provider offers the device flow.
    pub fn has_device_flow(&self) -> bool {
        self.device_endpoint.is_some()
    }

    /// Ask for a device code (what the user enters at the verification page).
    pub async fn start(&self) -> Result<DeviceCode, String> {
        let endpoint = self
            .device_endpoint
            .as_deref()
            .ok_or_else(|| format!("`{}` offers no device authorization endpoint", self.issuer))?;
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        if let Some(r) = &self.resource {
            form.push(("resource", r));
        }
        let (status, body) = fetch(self.http.post(endpoint).form(&form)).await?;
        if status != 200 {
            return Err(oauth_error("device authorization", status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| format!("device authorization response: {e}"))
    }

    /// Poll the token endpoint until the user authorized (or refused, or the code expired).
    pub async fn wait(&self, code: &DeviceCode) -> Result<LoginToken, String> {
        let mut interval = Duration::from_secs(code.interval.unwrap_or(5).max(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() > deadline {
                return Err(
                    "the device code expired before it was authorized; run `gatehouse login` again".into(),
                );
            }
            let form = [
                ("grant_type", DEVICE_GRANT),
                ("device_code", code.device_code.as_str()),
                ("client_id", self.client_id.as_str()),
            ];
            let (status, body) = match fetch(self.http.post(&self.token_endpoint).form(&form)).await {
                Ok(r) => r,
                // A network blip while the user is at the browser: keep polling.
                Err(_) => continue,
            };
            if status == 200 {
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| format!("token response: {e}"))?;
                return self.choose(t);
            }
            let err: ErrorResponse = serde_json::from_slice(&body)
                .map_err(|_| format!("token endpoint answered HTTP {status}"))?;
            match err.error.as_str() {
                "authorization_pending" => {}
                // RFC 8628 §3.5: back off by five seconds.
                "slow_down" => interval += Duration::from_secs(5),
                "access_denied" => return Err("the sign-in was refused at the provider".into()),
                "expired_token" => {
                    return Err(
                        "the device code expired before it was authorized; run `gatehouse login` again"
                            .into(),
                    );
                }
                _ => return Err(oauth_error("token", status, &body)),
            }
        }
    }

    /// Start the authorization code flow: a listener on 127.0.0.1 for the redirect, a PKCE
    /// verifier and a state, and the URL the user opens.
    pub async fn start_code(&self) -> Result<CodeLogin, String> {
        use rand::RngCore as _;
        use sha2::Digest as _;
        let endpoint = self
            .authorization_endpoint
            .as_deref()
            .ok_or_else(|| format!("`{}` offers no authorization endpoint", self.issuer))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen for the redirect: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let random = |n: usize| {
            let mut b = vec![0u8; n];
            rand::rng().fill_bytes(&mut b);
            URL_SAFE_NO_PAD.encode(b)
        };
        let (state, verifier) = (random(16), random(32));
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let mut url = reqwest::Url::parse(endpoint).map_err(|e| format!("authorization endpoint: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &redirect_uri)
                .append_pair("scope", &self.scope)
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(r) = &self.resource {
                q.append_pair("resource", r);
            }
        }
        Ok(CodeLogin {
            url: url.to_string(),
            listener,
            redirect_uri,
            state,
            verifier,
        })
    }

    /// Wait for the browser to come back to the listener (at most `timeout`) with this
    /// sign-in's state (redirects carrying another state are answered 400 and ignored: they are
    /// not ours), and exchange the code (with the PKCE verifier) for tokens.
    pub async fn finish_code(&self, flow: CodeLogin, timeout: Duration) -> Result<LoginToken, String> {
        let params = tokio::time::timeout(timeout, redirect_params(&flow.listener, &flow.state))
            .await
            .map_err(|_| "nobody came back from the sign-in page in time".to_string())??;
        if let Some(e) = params.get("error") {
            let detail = params
                .get("error_description")
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            return Err(format!("the provider refused the sign-in: {e}{detail}"));
        }
        let code = params.get("code").ok_or("the redirect carries no code")?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", flow.redirect_uri.as_str()),
            ("client_id", self.client_id.as_str()),
            ("code_verifier", flow.verifier.as_str()),
        ];
        if let Some(r) = &self.resource {
            form.push(("resource", r));
        }
        let (status, body) = fetch(self.http.post(&self.token_endpoint).form(&form)).await?;
        if status != 200 {
            return Err(oauth_error("token", status, &body));
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| format!("token response: {e}"))?;
        self.choose(t)
    }

    fn choose(&self, t: TokenResponse) -> Result<LoginToken, String> {
        if let (Some(at), Some(resource)) = (&t.access_token, &self.resource)
            && let Some(claims) = jwt_claims(at)
        {
            let aud = claims.get("aud");
            let for_resource = match aud {
                Some(Value::String(a)) => a == resource,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(resource)),
                _ => false,
            };
            if for_resource {
                return Ok(LoginToken {
                    token: at.clone(),
                    kind: "access_token",
                    claims,
                });
            }
        }
        let id = t
            .id_token
            .ok_or("the provider returned no JWT access token for the resource and no ID token")?;
        let claims = jwt_claims(&id).ok_or("the ID token is not a JWT")?;
        Ok(LoginToken {
            token: id,
            kind: "id_token",
            claims,
        })
    }
}

/// Serve the redirect: wait for `GET /callback?…` carrying `state` (other paths get 404,
/// other states 400, and the wait goes on), tell the browser to go back to the terminal, and
/// return the query's parameters.
async fn redirect_params(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<std::collections::HashMap<String, String>, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let reply = |status: &str, page: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        )
    };
    loop {
        let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        // The request line and headers, within one deadline per connection: an idle or
        // trickling connection (a browser's preconnect, a local prober) cannot hold the wait.
        let mut buf = Vec::with_capacity(2048);
        let read_head = async {
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), read_head)
            .await
            .is_err()
        {
            continue;
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        let params: Option<std::collections::HashMap<String, String>> = target
            .strip_prefix("/callback?")
            .and_then(|q| reqwest::Url::parse(&format!("http://127.0.0.1/callback?{q}")).ok())
            .map(|u| u.query_pairs().into_owned().collect());
        let Some(params) = params else {
            let _ = s.write_all(reply("404 Not Found", "").as_bytes()).await;
            continue;
        };
        // The state ties the answer to this sign-in: anything else is someone else's redirect.
        if params.get("state").map(String::as_str) != Some(state) {
            let page = "<!doctype html><title>Gatehouse</title><p>This link does not belong to the sign-in waiting here.</p>";
            let _ = s.write_all(reply("400 Bad Request", page).as_bytes()).await;
            continue;
        }
        let page = if let Some(e) = params.get("error") {
            format!(
                "<!doctype html><title>Gatehouse</title><p>The sign-in failed ({}). Go back to the terminal.</p>",
                html_escape(e)
            )
        } else if !params.contains_key("code") {
            "<!doctype html><title>Gatehouse</title><p>The sign-in came back without a code. Go back to the terminal.</p>".to_string()
        } else {
            "<!doctype html><title>Gatehouse</title><p>Signed in at the provider. You can close this window; the terminal says whether the gateway's token was issued.</p>".to_string()
        };
        let _ = s.write_all(reply("200 OK", &page).as_bytes()).await;
        return Ok(params);
    }
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A JWT's payload, unverified.
pub fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

async fn fetch(req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), String> {
    let mut resp = req
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err("response too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

fn oauth_error(what: &str, status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => match e.error_description {
            Some(d) => format!("{what}: {} ({d})", e.error),
            None => format!("{what}: {}", e.error),
        },
        Err(_) => format!("{what}: HTTP {status}"),
    }
}

// A real OpenID Provider for the conformance tests: the `oidc-provider` package (a certified
// OP implementation), on 127.0.0.1 and a port the OS picks. Prints one JSON line with its issuer
// once it listens.
//
// Clients (all `client_secret_basic`, secret = "<id>-secret"):
//   report-bot     client credentials, groups ["agents"]
//   plain-bot      client credentials, no groups claim
//   short-bot      client credentials, tokens live SHORT_TTL seconds (GATEHOUSE_OP_SHORT_TTL, 4)
//   gatehouse-cli  public client (no secret): device authorization grant, and authorization
//                  code + PKCE to http://127.0.0.1:<any port>/callback (`gatehouse login`)
// Accounts (humans): any name; `erin` is in ["engineering"], others have no groups.
// Resources (RFC 8707 `resource` parameter): "urn:gatehouse" (the default) and "urn:other-api"; both
// get JWT access tokens (RFC 9068) whose `aud` is the resource.
//
// `POST /_rotate` replaces the signing key with a new one (new kid; the old key is no longer
// published), as an IdP does when it rotates.
// `POST /_device_login?user_code=CODE&login=NAME` is the human at the browser: it opens the
// verification page for CODE, confirms it, signs in as NAME and consents, through the
// provider's own pages and cookies; 200 once the device is authorized.
// `POST /_browser_login?url=AUTHORIZATION_URL&login=NAME` is a browser opening the
// authorization link: sign-in as NAME, consent, then the redirect to the client's loopback
// listener is followed; 200 with the listener's status once it was reached.
import http from 'node:http';
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const SHORT_TTL = Number(process.env.GATEHOUSE_OP_SHORT_TTL || 4);
const GROUPS = { 'report-bot': ['agents'], 'short-bot': ['agents'] };
const USER_GROUPS = { erin: ['engineering'] };
let generation = 0;

async function signingKey() {
  generation += 1;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: `key-${generation}-${Date.now()}`, alg: 'RS256', use: 'sig' };
}

function makeProvider(issuer, key) {
  const clients = ['report-bot', 'plain-bot', 'short-bot'].map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }));
  clients.push({
    client_id: 'gatehouse-cli',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code'],
    response_types: ['code'],
    // RFC 8252 §7.3: any port on the loopback address.
    redirect_uris: ['http://127.0.0.1/callback'],
    token_endpoint_auth_method: 'none',
    application_type: 'native',
  });
  const provider = new Provider(issuer, {
    clients,
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, preferred_username: id, groups: USER_GROUPS[id] }),
    }),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    jwks: { keys: [key] },
    features: {
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:gatehouse',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: 'db',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: client.clientId === 'short-bot' ? SHORT_TTL : 600,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => {
      if (token.accountId) {
        const groups = USER_GROUPS[token.accountId];
        return { preferred_username: token.accountId, ...(groups ? { groups } : {}) };
      }
      const groups = GROUPS[token.clientId];
      return groups ? { groups } : undefined;
    },
  });
  provider.proxy = false;
  return provider;
}

let provider;
let issuer;
// Who the next sign-in is (set by /_device_login for the interaction it drives).
let pendingLogin;

// The sign-in and consent pages: sign in as `pendingLogin`, grant what the client asked for.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: pendingLogin } }, { mergeWithLastSubmission: false });
    return;
  }
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = details.prompt.details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

// A browser with a cookie jar.
function browser() {
  const jar = new Map();
  return async (url, init = {}) => {
    const headers = { ...(init.headers || {}), cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
    const r = await fetch(new URL(url, issuer), { ...init, headers, redirect: 'manual' });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i), pair.slice(i + 1));
    }
    return r;
  };
}

// Open an authorization link: follow the provider's redirects through sign-in and consent,
// then the final redirect to the client's loopback listener.
async function browserLogin(url, login) {
  pendingLogin = login;
  const send = browser();
  let r = await send(url);
  for (let hops = 0; hops < 20 && r.status >= 300 && r.status < 400; hops += 1) {
    const next = new URL(r.headers.get('location'), issuer);
    if (next.origin !== new URL(issuer).origin) {
      const back = await fetch(next, { redirect: 'manual' });
      return back.status;
    }
    r = await send(next.href);
  }
  throw new Error(`the sign-in ended at ${r.status}: ${(await r.text()).slice(0, 300)}`);
}

// The device pages, as a person at a browser.
async function deviceLogin(userCode, login) {
  pendingLogin = login;
  const send = browser();
  // The code entry page (pre-filled from the link), then the confirmation page: submit each
  // page's form as a person clicking "Continue" would, then follow the redirects through
  // sign-in and consent.
  let r = await send(`/device?user_code=${encodeURIComponent(userCode)}`);
  for (let page = 0; page < 3 && r.status === 200; page += 1) {
    const html = await r.clone().text();
    const form = new URLSearchParams();
    for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/?>/g)) form.set(m[1], m[2]);
    if (!form.has('xsrf')) break;
    if (!form.has('user_code')) form.set('user_code', userCode);
    r = await send('/device', { method: 'POST', body: form, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
  }
  for (let hops = 0; r.status >= 300 && r.status < 400 && hops < 10; hops += 1) {
    r = await send(r.headers.get('location'));
  }
  const done = await r.text();
  if (r.status !== 200 || !/success|Sign-in Success/i.test(done)) throw new Error(`device login ended with ${r.status}: ${done.slice(0, 300)}`);
}

const server = http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/_device_login')) {
    const q = new URL(req.url, issuer).searchParams;
    try {
      await deviceLogin(q.get('user_code'), q.get('login'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"authorized":true}');
    } catch (e) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(e) }));
    }
    return;
  }
  if (req.method === 'POST' && req.url.startsWith('/_browser_login')) {
    const q = new URL(req.url, issuer).searchParams;
    try {
      const status = await browserLogin(q.get('url'), q.get('login'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ callback_status: status }));
    } catch (e) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(e) }));
    }
    return;
  }
  if (req.url.startsWith('/interaction/')) {
    try {
      await interaction(req, res);
    } catch (e) {
      res.writeHead(500);
      res.end(String(e));
    }
    return;
  }
  if (req.method === 'POST' && req.url === '/_rotate') {
    provider = makeProvider(issuer, await signingKey());
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ rotated: generation }));
    return;
  }
  provider.callback()(req, res);
});
server.listen(0, '127.0.0.1', async () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = makeProvider(issuer, await signingKey());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

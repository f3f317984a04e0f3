//! One configured plugin: its live version (compiled component + `InstancePre`, identified
//! by content hash), its instances, per-call limits, fault accounting and quarantine.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Store, Trap};

use crate::config::{FailMode, PluginConfig};
use crate::fault::{FaultKind, PluginError, PluginId};
use crate::host::{Forbidden, PluginHost};
use crate::store::{StoreState, truncate};
use crate::wit::{Bindings, BindingsPre, Hook, WitPluginInfo};

/// Longest plugin error message kept (bytes).
const MAX_ERROR_MESSAGE: usize = 1024;

/// What a plugin says it is (from `describe`), plus the content hash of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The hooks it implements; the host calls only these.
    pub hooks: Vec<Hook>,
    pub wants_http_body: bool,
    /// SHA-256 of the `.wasm` file, lowercase hex.
    pub hash: String,
}

impl PluginInfo {
    /// Whether the plugin implements `hook`.
    pub fn implements(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }
}

/// A validated, instantiable version of a plugin.
pub(crate) struct Version {
    pub(crate) id: PluginId,
    pub(crate) digest: [u8; 32],
    pub(crate) info: PluginInfo,
    hooks: u8,
    pre: BindingsPre<StoreState>,
    pub(crate) generation: u64,
}

impl Version {
    pub(crate) fn implements(&self, hook: Hook) -> bool {
        self.hooks & hook.bit() != 0
    }
}

/// The limits a call runs under.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) memory: usize,
    pub(crate) fuel: Option<u64>,
}

impl Limits {
    pub(crate) fn of(host: &PluginHost, config: &PluginConfig) -> Result<Limits, PluginError> {
        let bad = |message: String| PluginError::Config {
            name: config.name.clone(),
            message,
        };
        if config.timeout_ms == 0 || config.timeout_ms > 60_000 {
            return Err(bad(format!(
                "timeout_ms must be between 1 and 60000, not {}",
                config.timeout_ms
            )));
        }
        if config.memory_mb == 0 || config.memory_mb > host.config.max_memory_mb {
            return Err(bad(format!(
                "memory_mb must be between 1 and {} (the host's max_memory_mb), not {}",
                host.config.max_memory_mb, config.memory_mb
            )));
        }
        if config.fuel.is_some() && !host.config.fuel {
            return Err(bad(
                "fuel needs the plugin engine built with fuel metering (HostConfig::fuel)".to_string(),
            ));
        }
        Ok(Limits {
            timeout: config.timeout(),
            memory: usize::try_from(config.memory_mb << 20).unwrap_or(usize::MAX),
            fuel: config.fuel,
        })
    }
}

/// A running instance of one version, owned by one session.
pub(crate) struct Live {
    version: Arc<Version>,
    store: Store<StoreState>,
    bindings: Bindings,
}

/// Counters for [`crate::PluginStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) trap: AtomicU64,
    pub(crate) timeout: AtomicU64,
    pub(crate) memory: AtomicU64,
    pub(crate) fuel: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) plugin_error: AtomicU64,
    pub(crate) instantiate: AtomicU64,
    pub(crate) host: AtomicU64,
    pub(crate) quarantine_skips: AtomicU64,
    pub(crate) quarantines: AtomicU64,
    pub(crate) instantiations: AtomicU64,
    pub(crate) instantiation_nanos: AtomicU64,
    pub(crate) call_nanos: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add_nanos(counter: &AtomicU64, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::Relaxed);
}

#[derive(Default)]
struct Quarantine {
    recent: VecDeque<Instant>,
    until: Option<Instant>,
}

/// Result of [`Entry::invoke`].
pub(crate) enum Invoked<R> {
    /// The live version does not implement the hook: nothing ran.
    Skipped,
    Ran {
        id: PluginId,
        result: Result<R, FaultKind>,
        elapsed: Duration,
    },
}

/// The versions before and after a reload that swapped.
pub(crate) type Swap = (Arc<Version>, Arc<Version>);

/// One configured plugin, shared by the set, its chains and their sessions.
pub(crate) struct Entry {
    pub(crate) host: Arc<PluginHost>,
    pub(crate) config: PluginConfig,
    pub(crate) name: Arc<str>,
    config_json: Arc<str>,
    pub(crate) limits: Limits,
    current: RwLock<Arc<Version>>,
    pub(crate) counters: Counters,
    quarantine: Mutex<Quarantine>,
    /// Serializes reloads of this plugin.
    reload_lock: Mutex<()>,
}

/// SHA-256 of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn read_file(name: &str, path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|source| PluginError::Read {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

impl Entry {
    /// Read, compile, link and `describe` the plugin of `config`.
    pub(crate) fn load(host: &Arc<PluginHost>, config: &PluginConfig) -> Result<Entry, PluginError> {
        if config.name.is_empty() {
            return Err(PluginError::Config {
                name: String::new(),
                message: "a plugin needs a name".to_string(),
            });
        }
        let limits = Limits::of(host, config)?;
        let config_json: Arc<str> =
            Arc::from(
                serde_json::to_string(&config.config).map_err(|e| PluginError::Config {
                    name: config.name.clone(),
                    message: format!("config is not JSON: {e}"),
                })?,
            );
        let name: Arc<str> = Arc::from(config.name.as_str());
        let bytes = read_file(&config.name, &config.path)?;
        let version = load_version(host, &name, &config_json, &limits, &bytes, 1).map_err(|message| {
            PluginError::Invalid {
                name: config.name.clone(),
                path: config.path.clone(),
                message,
            }
        })?;
        tracing::info!(
            plugin = %name,
            hash = %version.id.hash,
            version = %version.info.version,
            hooks = ?version.info.hooks,
            "plugin loaded"
        );
        Ok(Entry {
            host: Arc::clone(host),
            config: config.clone(),
            name,
            config_json,
            limits,
            current: RwLock::new(Arc::new(version)),
            counters: Counters::default(),
            quarantine: Mutex::new(Quarantine::default()),
            reload_lock: Mutex::new(()),
        })
    }

    pub(crate) fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-read the file; when its hash differs from the live version's, validate it and swap
    /// it in. `Ok(None)`: unchanged. `Ok(Some((old, new)))`: swapped. `skip` is a hash not to
    /// try again (the watcher's last rejected one): reported as `Err` without compiling.
    pub(crate) fn reload(
        &self,
        skip: Option<&[u8; 32]>,
    ) -> Result<Option<Swap>, (Option<[u8; 32]>, PluginError)> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = read_file(&self.config.name, &self.config.path).map_err(|e| (None, e))?;
        let hash = digest(&bytes);
        let old = self.current();
        if hash == old.digest {
            return Ok(None);
        }
        let invalid = |message: String| {
            (
                Some(hash),
                PluginError::Invalid {
                    name: self.config.name.clone(),
                    path: self.config.path.clone(),
                    message,
                },
            )
        };
        if skip == Some(&hash) {
            return Err(invalid("already rejected".to_string()));
        }
        let generation = old.generation + 1;
        let version = match load_version(
            &self.host,
            &self.name,
            &self.config_json,
            &self.limits,
            &bytes,
            generation,
        ) {
            Ok(version) => Arc::new(version),
            Err(message) => {
                bump(&self.counters.reload_failures);
                return Err(invalid(message));
            }
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&version);
        *self.quarantine.lock().unwrap_or_else(|e| e.into_inner()) = Quarantine::default();
        bump(&self.counters.reloads);
        tracing::info!(
            plugin = %self.name,
            old_hash = %old.id.hash,
            hash = %version.id.hash,
            version = %version.info.version,
            generation,
            "plugin reloaded"
        );
        Ok(Some((old, version)))
    }

    /// Whether the plugin is quarantined now.
    pub(crate) fn quarantined(&self) -> bool {
        let mut q = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        match q.until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                q.until = None;
                tracing::info!(plugin = %self.name, "plugin quarantine over");
                false
            }
            None => false,
        }
    }

    /// Run one hook call on this session's instance (`slot`), creating it (fresh from the
    /// live version) when there is none or the live version changed. A fault discards the
    /// instance, is counted and logged, and may quarantine the plugin.
    pub(crate) fn invoke<R>(
        &self,
        slot: &mut Option<Live>,
        hook: Hook,
        call: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Invoked<R> {
        let version = self.current();
        if !version.implements(hook) {
            return Invoked::Skipped;
        }
        let id = version.id.clone();
        let start = Instant::now();
        if self.quarantined() {
            bump(&self.counters.quarantine_skips);
            return Invoked::Ran {
                id,
                result: Err(FaultKind::Quarantined),
                elapsed: start.elapsed(),
            };
        }
        bump(&self.counters.calls);
        if slot
            .as_ref()
            .is_some_and(|live| !Arc::ptr_eq(&live.version, &version))
        {
            *slot = None;
        }
        let live = match slot {
            Some(live) => live,
            None => match self.instantiate(&version) {
                Ok(live) => slot.insert(live),
                Err(kind) => {
                    self.fault(slot, &id, hook, &kind);
                    return Invoked::Ran {
                        id,
                        result: Err(kind),
                        elapsed: start.elapsed(),
                    };
                }
            },
        };
        let call_start = Instant::now();
        let outcome = live.call(&self.host, &self.limits, call);
        add_nanos(&self.counters.call_nanos, call_start.elapsed());
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(FaultKind::PluginError(
                truncate(&message, MAX_ERROR_MESSAGE).to_string(),
            )),
            Err((error, memory_hit)) => Err(classify(&error, memory_hit)),
        };
        if let Err(kind) = &result {
            self.fault(slot, &id, hook, kind);
        }
        Invoked::Ran {
            id,
            result,
            elapsed: start.elapsed(),
        }
    }

    fn instantiate(&self, version: &Arc<Version>) -> Result<Live, FaultKind> {
        let start = Instant::now();
        let live = Live::new(
            &self.host,
            version,
            Arc::clone(&self.name),
            Arc::clone(&self.config_json),
            &self.limits,
        )
        .map_err(|(error, memory_hit)| match classify(&error, memory_hit) {
            FaultKind::Memory => FaultKind::Memory,
            FaultKind::Timeout => FaultKind::Timeout,
            _ => FaultKind::Instantiate(format!("{error:#}")),
        })?;
        bump(&self.counters.instantiations);
        add_nanos(&self.counters.instantiation_nanos, start.elapsed());
        Ok(live)
    }

    /// Account for a fault: discard the instance, count it by kind, log it once, and
    /// quarantine the plugin after too many.
    pub(crate) fn fault(&self, slot: &mut Option<Live>, id: &PluginId, hook: Hook, kind: &FaultKind) {
        *slot = None;
        let c = &self.counters;
        bump(match kind {
            FaultKind::Trap(_) => &c.trap,
            FaultKind::Timeout => &c.timeout,
            FaultKind::Memory => &c.memory,
            FaultKind::Fuel => &c.fuel,
            FaultKind::Malformed(_) => &c.malformed,
            FaultKind::PluginError(_) => &c.plugin_error,
            FaultKind::Instantiate(_) => &c.instantiate,
            FaultKind::Host(_) => &c.host,
            FaultKind::Quarantined => &c.quarantine_skips,
        });
        tracing::warn!(
            plugin = %id.name,
            hash = %id.hash,
            %hook,
            fault = %kind,
            fail = self.config.fail.as_str(),
            "plugin fault"
        );
        let counts = matches!(
            kind,
            FaultKind::Trap(_)
                | FaultKind::Timeout
                | FaultKind::Memory
                | FaultKind::Fuel
                | FaultKind::Malformed(_)
                | FaultKind::PluginError(_)
        );
        let threshold = self.host.config.quarantine_faults as usize;
        if !counts || threshold == 0 {
            return;
        }
        let window = Duration::from_secs(self.host.config.quarantine_window_secs);
        let period = Duration::from_secs(self.host.config.quarantine_secs);
        let now = Instant::now();
        let mut q = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        q.recent.push_back(now);
        while q.recent.front().is_some_and(|&t| now.duration_since(t) > window) {
            q.recent.pop_front();
        }
        if q.recent.len() >= threshold && q.until.is_none() {
            q.recent.clear();
            q.until = Some(now + period);
            bump(&c.quarantines);
            tracing::warn!(
                plugin = %id.name,
                hash = %id.hash,
                faults = threshold,
                window_secs = window.as_secs(),
                quarantine_secs = period.as_secs(),
                fail = self.config.fail.as_str(),
                "plugin quarantined after repeated faults"
            );
        }
    }

    pub(crate) fn fail(&self) -> FailMode {
        self.config.fail
    }
}

impl Live {
    fn new(
        host: &PluginHost,
        version: &Arc<Version>,
        name: Arc<str>,
        config_json: Arc<str>,
        limits: &Limits,
    ) -> Result<Live, (wasmtime::Error, bool)> {
        let mut store = Store::new(&host.engine, StoreState::new(name, config_json, limits.memory));
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(host.deadline_ticks(limits.timeout));
        if host.config.fuel {
            store
                .set_fuel(limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| (e, false))?;
        }
        match version.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Live {
                version: Arc::clone(version),
                store,
                bindings,
            }),
            Err(error) => {
                let memory_hit = store.data().limiter.memory_hit;
                store.data_mut().end_call();
                Err((error, memory_hit))
            }
        }
    }

    fn call<R>(
        &mut self,
        host: &PluginHost,
        limits: &Limits,
        call: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<Result<R, String>, (wasmtime::Error, bool)> {
        self.store.data_mut().begin_call();
        self.store.set_epoch_deadline(host.deadline_ticks(limits.timeout));
        if host.config.fuel {
            self.store
                .set_fuel(limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| (e, false))?;
        }
        let result = call(&self.bindings, &mut self.store);
        let memory_hit = self.store.data().limiter.memory_hit;
        self.store.data_mut().end_call();
        result.map_err(|e| (e, memory_hit))
    }
}

/// Sort a failed call into a fault kind.
fn classify(error: &wasmtime::Error, memory_hit: bool) -> FaultKind {
    if memory_hit {
        return FaultKind::Memory;
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => FaultKind::Timeout,
            Trap::OutOfFuel => FaultKind::Fuel,
            other => FaultKind::Trap(other.to_string()),
        };
    }
    if let Some(forbidden) = error.downcast_ref::<Forbidden>() {
        return FaultKind::Trap(forbidden.to_string());
    }
    // Anything else failed while lifting the results (a string that is not UTF-8, a
    // pointer out of bounds, a bad discriminant, ...) or in a WASI call.
    FaultKind::Malformed(truncate(&format!("{:#}", error), MAX_ERROR_MESSAGE).to_string())
}

/// Compile, link (type-check imports and exports against the world) and `describe`.
fn load_version(
    host: &PluginHost,
    name: &Arc<str>,
    config_json: &Arc<str>,
    limits: &Limits,
    bytes: &[u8],
    generation: u64,
) -> Result<Version, String> {
    let digest = digest(bytes);
    let component = host.compile(&digest, bytes)?;
    let instance_pre = host
        .linker
        .instantiate_pre(&component)
        .map_err(|e| format!("{e:#}"))?;
    let pre = BindingsPre::new(instance_pre)
        .map_err(|e| format!("exports do not match the gatehouse:plugin world: {e:#}"))?;
    let id = PluginId {
        name: Arc::clone(name),
        hash: Arc::from(hex(&digest)),
    };
    let mut version = Version {
        id,
        digest,
        info: PluginInfo {
            name: String::new(),
            version: String::new(),
            hooks: Vec::new(),
            wants_http_body: false,
            hash: hex(&digest),
        },
        hooks: 0,
        pre,
        generation,
    };
    let version_arc = Arc::new(version);
    let mut live = Live::new(
        host,
        &version_arc,
        Arc::clone(name),
        Arc::clone(config_json),
        limits,
    )
    .map_err(|(e, memory_hit)| format!("cannot instantiate: {}", classify(&e, memory_hit)))?;
    let described = live
        .call(host, limits, |bindings, store| {
            bindings.call_describe(store).map(Ok::<_, String>)
        })
        .map_err(|(e, memory_hit)| format!("describe failed: {}", classify(&e, memory_hit)))?
        .map_err(|e| format!("describe failed: {e}"))?;
    drop(live);
    let info = check_info(described)?;
    version = Arc::into_inner(version_arc)
        .ok_or_else(|| "internal: version still shared after describe".to_string())?;
    version.hooks = info.hooks.iter().fold(0, |bits, hook| bits | hook.bit());
    version.info.name = info.name;
    version.info.version = info.version;
    version.info.hooks = info.hooks;
    version.info.wants_http_body = info.wants_http_body;
    Ok(version)
}

fn check_info(mut info: WitPluginInfo) -> Result<WitPluginInfo, String> {
    let bad = |what: &str, s: &str| {
        s.is_empty() && what == "name" || s.len() > 128 || s.chars().any(char::is_control)
    };
    if bad("name", &info.name) || bad("version", &info.version) {
        return Err("describe returned an empty, overlong or unprintable name or version".into());
    }
    let mut hooks = Vec::with_capacity(info.hooks.len());
    for hook in Hook::ALL {
        if info.hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    info.hooks = hooks;
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}

//! All configured plugins, by name: loading, chains, hot reload and stats.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chain::Chain;
use crate::config::{FailMode, PluginConfig};
use crate::fault::PluginError;
use crate::host::PluginHost;
use crate::plugin::{Entry, PluginInfo};

/// Every configured plugin, loaded and validated. Share it as `Arc`.
pub struct PluginSet {
    host: Arc<PluginHost>,
    entries: Vec<Arc<Entry>>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSet")
            .field("plugins", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`PluginSet::reload`] did for one plugin.
#[derive(Debug)]
pub struct ReloadReport {
    pub plugin: String,
    pub outcome: ReloadOutcome,
}

/// See [`ReloadReport`].
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's content hash is the live version's.
    Unchanged,
    /// A new version passed validation and is live: new sessions use it, running sessions
    /// switch at their next call of the plugin.
    Swapped {
        old_hash: String,
        new_hash: String,
        generation: u64,
    },
    /// The file could not be read or is not a valid plugin; the last good version stays.
    Rejected(PluginError),
}

/// A snapshot of one plugin's counters, for metrics. Counters are totals since load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStats {
    pub name: String,
    /// Content hash of the live version.
    pub hash: String,
    /// Version string from `describe`.
    pub version: String,
    /// 1 at load, one more per reload that swapped a new version in.
    pub generation: u64,
    pub fail: FailMode,
    /// Hook calls started (quarantine skips not included).
    pub calls: u64,
    pub faults: FaultCounts,
    /// Whether the plugin is quarantined now.
    pub quarantined: bool,
    /// Times it was quarantined.
    pub quarantines: u64,
    /// Calls skipped because it was quarantined.
    pub quarantine_skips: u64,
    /// Instances created (one per session that used it, plus one after each fault/reload).
    pub instantiations: u64,
    /// Total time spent creating instances.
    pub instantiation_nanos: u64,
    /// Total time spent in hook calls (guest code plus argument/result copying).
    pub call_nanos: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// Faults by kind (bounded labels: see [`crate::FaultKind::label`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub trap: u64,
    pub timeout: u64,
    pub memory: u64,
    pub fuel: u64,
    pub malformed: u64,
    pub plugin_error: u64,
    pub instantiate: u64,
    pub host: u64,
}

impl FaultCounts {
    /// `(label, count)` for each kind, labels as in [`crate::FaultKind::label`].
    pub fn by_label(&self) -> [(&'static str, u64); 8] {
        [
            ("trap", self.trap),
            ("timeout", self.timeout),
            ("memory", self.memory),
            ("fuel", self.fuel),
            ("malformed", self.malformed),
            ("plugin-error", self.plugin_error),
            ("instantiate", self.instantiate),
            ("host", self.host),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_label().iter().map(|(_, n)| n).sum()
    }
}

impl PluginSet {
    /// Load and validate every plugin (compile, link against the world, `describe`). Any
    /// failure fails the whole load: a gateway does not start with a plugin missing.
    pub fn load(host: &Arc<PluginHost>, configs: &[PluginConfig]) -> Result<Arc<PluginSet>, PluginError> {
        let mut entries = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::new();
        for config in configs {
            if by_name.contains_key(&config.name) {
                return Err(PluginError::Config {
                    name: config.name.clone(),
                    message: "configured twice".to_string(),
                });
            }
            by_name.insert(config.name.clone(), entries.len());
            entries.push(Arc::new(Entry::load(host, config)?));
        }
        Ok(Arc::new(PluginSet {
            host: Arc::clone(host),
            entries,
            by_name,
        }))
    }

    /// The engine this set runs on.
    pub fn host(&self) -> &Arc<PluginHost> {
        &self.host
    }

    /// The plugins' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.to_string()).collect()
    }

    /// The live version's description of the plugin `name`.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        let entry = self.entries.get(*self.by_name.get(name)?)?;
        Some(entry.current().info.clone())
    }

    /// The chain for a target that lists these plugins, in this order. Unknown names and
    /// repeated names are errors.
    pub fn chain<S: AsRef<str>>(&self, names: &[S]) -> Result<Chain, PluginError> {
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            let index = *self
                .by_name
                .get(name)
                .ok_or_else(|| PluginError::Unknown(name.to_string()))?;
            let entry = self
                .entries
                .get(index)
                .ok_or_else(|| PluginError::Unknown(name.to_string()))?;
            if entries.iter().any(|e: &Arc<Entry>| Arc::ptr_eq(e, entry)) {
                return Err(PluginError::Config {
                    name: name.to_string(),
                    message: "listed twice in one chain".to_string(),
                });
            }
            entries.push(Arc::clone(entry));
        }
        Ok(Chain {
            entries: entries.into(),
        })
    }

    /// Re-read every plugin file now; a changed one that validates is swapped in, one that
    /// does not is rejected (logged at warn) and the last good version stays.
    pub fn reload(&self) -> Vec<ReloadReport> {
        self.entries
            .iter()
            .map(|entry| {
                let outcome = match entry.reload(None) {
                    Ok(None) => ReloadOutcome::Unchanged,
                    Ok(Some((old, new))) => ReloadOutcome::Swapped {
                        old_hash: old.id.hash.to_string(),
                        new_hash: new.id.hash.to_string(),
                        generation: new.generation,
                    },
                    Err((_, error)) => {
                        warn_kept(entry, &error);
                        ReloadOutcome::Rejected(error)
                    }
                };
                ReloadReport {
                    plugin: entry.name.to_string(),
                    outcome,
                }
            })
            .collect()
    }

    /// Spawn a background thread (`gatehouse-plugin-watch`) that checks every plugin file
    /// every `interval` by content hash. A change that validates is swapped in (logged at
    /// info); one that does not keeps the last good version and is logged at warn, once per
    /// distinct content (it is not compiled again until the file changes). The thread holds
    /// only a `Weak` and ends after the set is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<JoinHandle<()>> {
        let set: Weak<PluginSet> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("gatehouse-plugin-watch".to_string())
            .spawn(move || {
                // Per plugin: the last rejected content (hash) or read error, warned once.
                let mut rejected: HashMap<String, (Option<[u8; 32]>, String)> = HashMap::new();
                loop {
                    std::thread::sleep(interval);
                    let Some(set) = set.upgrade() else {
                        tracing::debug!("plugin set dropped, watcher stops");
                        return;
                    };
                    set.poll(&mut rejected);
                }
            })
    }

    /// One watcher tick.
    fn poll(&self, rejected: &mut HashMap<String, (Option<[u8; 32]>, String)>) {
        for entry in &self.entries {
            let last = rejected.get(&*entry.name);
            let skip = last.and_then(|(hash, _)| hash.as_ref());
            match entry.reload(skip) {
                Ok(_) => {
                    rejected.remove(&*entry.name);
                }
                Err((hash, error)) => {
                    if hash.is_some() && hash.as_ref() == skip {
                        continue; // same bad content as last time, already warned
                    }
                    let key = error.to_string();
                    if last.is_some_and(|(h, k)| h.is_none() && hash.is_none() && *k == key) {
                        continue; // same read error as last time
                    }
                    warn_kept(entry, &error);
                    rejected.insert(entry.name.to_string(), (hash, key));
                }
            }
        }
    }

    /// Counters of every plugin, in configuration order.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.entries
            .iter()
            .map(|entry| {
                let version = entry.current();
                let c = &entry.counters;
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                PluginStats {
                    name: entry.name.to_string(),
                    hash: version.id.hash.to_string(),
                    version: version.info.version.clone(),
                    generation: version.generation,
                    fail: entry.fail(),
                    calls: get(&c.calls),
                    faults: FaultCounts {
                        trap: get(&c.trap),
                        timeout: get(&c.timeout),
                        memory: get(&c.memory),
                        fuel: get(&c.fuel),
                        malformed: get(&c.malformed),
                        plugin_error: get(&c.plugin_error),
                        instantiate: get(&c.instantiate),
                        host: get(&c.host),
                    },
                    quarantined: entry.quarantined(),
                    quarantines: get(&c.quarantines),
                    quarantine_skips: get(&c.quarantine_skips),
                    instantiations: get(&c.instantiations),
                    instantiation_nanos: get(&c.instantiation_nanos),
                    call_nanos: get(&c.call_nanos),
                    reloads: get(&c.reloads),
                    reload_failures: get(&c.reload_failures),
                }
            })
            .collect()
    }
}

fn warn_kept(entry: &Entry, error: &PluginError) {
    let live = entry.current();
    tracing::warn!(
        plugin = %entry.name,
        %error,
        hash = %live.id.hash,
        generation = live.generation,
        "plugin reload failed, keeping the last good version"
    );
}

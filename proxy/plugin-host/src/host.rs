//! The process-wide plugin engine: one wasmtime `Engine` (component model, pooling
//! allocator, epoch interruption, optional fuel), the epoch ticker thread, the `Linker` with
//! WASI p2 and the `host` imports, and a cache of compiled components by content hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::HostConfig;
use crate::fault::PluginError;
use crate::store::StoreState;
use crate::wit::Bindings;

/// Compiled components kept for reuse (reloads back to a known hash, several sets).
const COMPONENT_CACHE: usize = 32;

/// The WASI version whose `wasi:io/poll` the linker defines (wasmtime-wasi 48); guests
/// importing any compatible 0.2.x version resolve to it.
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// The plugin engine. Create one per process with [`PluginHost::new`] and share it (`Arc`)
/// among [`crate::PluginSet`]s.
pub struct PluginHost {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    pub(crate) config: HostConfig,
    cache: Mutex<HashMap<[u8; 32], Component>>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A WASI call plugins may not make (it would block the calling thread outside of wasm,
/// where the epoch deadline cannot interrupt it). Raised as a trap.
#[derive(Debug, thiserror::Error)]
#[error("plugin called {0}, which blocks; plugins may not block or sleep")]
pub(crate) struct Forbidden(pub(crate) &'static str);

impl PluginHost {
    /// Build the engine and start the epoch ticker (a thread named `gatehouse-plugin-epoch`
    /// that ends when the engine is dropped).
    pub fn new(config: HostConfig) -> Result<Arc<PluginHost>, PluginError> {
        if config.epoch_tick_ms == 0 || config.max_instances == 0 || config.max_memory_mb == 0 {
            return Err(PluginError::Engine(
                "epoch_tick_ms, max_instances and max_memory_mb must be positive".to_string(),
            ));
        }
        let max_memory = usize::try_from(config.max_memory_mb.saturating_mul(1 << 20))
            .map_err(|_| PluginError::Engine("max_memory_mb too large".to_string()))?;
        let n = config.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .max_tables_per_module(4)
            .max_memory_size(max_memory);

        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<StoreState>::new(&engine);
        build_linker(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let weak = engine.weak();
        let tick = Duration::from_millis(config.epoch_tick_ms);
        std::thread::Builder::new()
            .name("gatehouse-plugin-epoch".to_string())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let Some(engine) = weak.upgrade() else {
                        tracing::debug!("plugin engine dropped, epoch ticker stops");
                        return;
                    };
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(Arc::new(PluginHost {
            engine,
            linker,
            config,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Compile `bytes` (whose SHA-256 is `hash`), or return the cached compilation.
    pub(crate) fn compile(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<Component, String> {
        if let Some(component) = self.lock_cache().get(hash) {
            return Ok(component.clone());
        }
        let component = Component::from_binary(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        let mut cache = self.lock_cache();
        if cache.len() >= COMPONENT_CACHE {
            cache.clear();
        }
        cache.insert(*hash, component.clone());
        Ok(component)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Component>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Epoch ticks for a deadline of `timeout`: rounded up, plus one because the current tick
    /// may be about to end.
    pub(crate) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = u128::from(self.config.epoch_tick_ms.max(1));
        let ticks = timeout.as_millis().div_ceil(tick).max(1) + 1;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// WASI p2 (sync; over the locked-down context of [`StoreState`]), the `host` imports, and
/// traps instead of the WASI calls that block.
fn build_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    Bindings::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |state| state)?;
    // `wasi:io/poll` is the only way for a guest to block (sleep, wait for a clock): that
    // would happen in host code, out of reach of the epoch deadline. Plugins have nothing to
    // wait for, so both entry points trap.
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL)?;
    poll.func_new("poll", |_, _, _, _| {
        Err(wasmtime::Error::new(Forbidden("wasi:io/poll.poll")))
    })?;
    poll.func_new("[method]pollable.block", |_, _, _, _| {
        Err(wasmtime::Error::new(Forbidden("wasi:io/poll.pollable.block")))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

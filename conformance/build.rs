//! Link setting for binaries that contain both libpg_query (pg_query) and RocksDB's LZ4
//! (lz4-sys): each C library bundles its own copy of xxHash with the same exported symbols.
//! The copies implement the same functions; RocksDB only uses LZ4's block API, which does not
//! call xxHash. Tracked for removal: build RocksDB with a compression library that namespaces
//! its xxHash (zstd) instead of LZ4.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--allow-multiple-definition");
}

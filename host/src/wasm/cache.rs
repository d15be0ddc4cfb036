//! The on-disk cache of compiled Wasm code, Legate's own (`--wasm-cache-dir`).
//! Compiling a large filter takes seconds; a start or reload that finds the
//! machine code of the same bytes, made by the same wasmtime with the same
//! settings, maps it in instead of compiling again.
//!
//! A file is named `<sha256 of the .wasm>-<engine>.cwasm`, so `sha256sum`
//! finds a filter's entry and builds with other settings never share one.
//! Files are written whole and renamed into place: a file in use is never
//! changed, and a reader never sees half of one.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// The cache's directory, and whether entries are saved there too.
struct Cache {
    dir: PathBuf,
    writable: bool,
}

static CACHE: OnceLock<Cache> = OnceLock::new();

/// Turns the cache on, in `dir` (made with mode 0700 if missing). Loading
/// machine code runs it in the proxy, so only the proxy's user (or root) may
/// own the directory and write to it. A directory the proxy cannot write, say
/// one filled when a read-only image was built, is only read.
pub fn set_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the Wasm cache directory {shown}: {e}"))?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read the Wasm cache directory {shown}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("the Wasm cache path {shown} is not a directory"));
    }
    trusted(&meta).map_err(|why| {
        format!(
            "the Wasm cache directory {shown} {why}; code loaded from it runs in the proxy, \
             so only the proxy's user or root may own and write it"
        )
    })?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"").is_ok();
    if writable {
        let _ = std::fs::remove_file(&probe);
        sweep(dir, STALE);
    } else {
        tracing::info!(
            "the Wasm cache directory {shown} is read-only: compiled code is loaded from it, not saved"
        );
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    CACHE
        .set(Cache { dir, writable })
        .map_err(|_| "the Wasm cache directory is already set".to_string())
}

/// The process's effective user: the owner of /proc/self.
fn my_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| std::fs::metadata("/proc/self").map(|m| m.uid()).ok())
}

/// Whether the code in a directory or entry may run in the proxy: only its
/// owner may write it, and that is the proxy's user or root. If not, why.
fn trusted(m: &std::fs::Metadata) -> Result<(), String> {
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!("is writable by other users (mode {mode:04o})"));
    }
    if m.uid() != 0 && Some(m.uid()) != my_uid() {
        return Err(format!("belongs to another user (uid {})", m.uid()));
    }
    Ok(())
}

/// How old a half-written entry must be before a start removes it: writers
/// rename theirs into place within seconds.
const STALE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the half-written entries (`*.tmp-*`) of writers that died before
/// renaming them, once they are older than `age`.
fn sweep(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a >= age);
        if stale && e.file_name().to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Where the compiled form of `bytes` lives, and whether to save it there,
/// if the cache is on.
fn entry(engine: &Engine, bytes: &[u8]) -> Option<(PathBuf, bool)> {
    let cache = CACHE.get()?;
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let sha: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("{sha}-{:016x}.cwasm", settings.finish());
    Some((cache.dir.join(name), cache.writable))
}

/// The compiled module of `bytes`: from the cache, or compiled (and saved).
#[allow(unsafe_code)]
pub(super) fn module(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Module> {
    cached(
        entry(engine, bytes),
        // SAFETY: only the proxy's user or root can have written the file
        // (`trusted` checks the directory's and the file's owner and mode),
        // and legate never changes an entry in place;
        // wasmtime checks that it was made by this version with these settings.
        |p| unsafe { Module::deserialize_file(engine, p) },
        || Module::new(engine, bytes),
        Module::serialize,
    )
}

/// The compiled component of `bytes`: from the cache, or compiled (and saved).
#[allow(unsafe_code)]
pub(super) fn component(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    cached(
        entry(engine, bytes),
        // SAFETY: as for `module`.
        |p| unsafe { Component::deserialize_file(engine, p) },
        || Component::new(engine, bytes),
        Component::serialize,
    )
}

fn cached<T>(
    entry: Option<(PathBuf, bool)>,
    load: impl FnOnce(&Path) -> wasmtime::Result<T>,
    compile: impl FnOnce() -> wasmtime::Result<T>,
    serialize: impl FnOnce(&T) -> wasmtime::Result<Vec<u8>>,
) -> wasmtime::Result<T> {
    let Some((path, save)) = entry else {
        return compile();
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let found = std::fs::metadata(&path).map(|m| trusted(&m));
    if let Ok(Err(why)) = &found {
        tracing::warn!(
            "ignoring the cached Wasm code {}: it {why}; compiling again",
            path.display()
        );
    }
    if let Ok(Ok(())) = found {
        let start = Instant::now();
        match load(&path) {
            Ok(code) => {
                tracing::info!(
                    "Wasm code loaded from the cache in {:.1} ms: {}",
                    ms(start),
                    path.display()
                );
                return Ok(code);
            }
            Err(e) => tracing::warn!(
                "ignoring the cached Wasm code {} ({}); compiling again",
                path.display(),
                e.root_cause()
            ),
        }
    }
    let start = Instant::now();
    let code = compile()?;
    let compiled_ms = ms(start);
    if !save {
        tracing::info!("Wasm code compiled in {compiled_ms:.0} ms; not in the read-only cache");
        return Ok(code);
    }
    match serialize(&code).map_err(|e| e.to_string()).and_then(|b| {
        // Unique per writer, so that concurrent writers each rename whole files.
        let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), fastrand::u64(..)));
        // Mode 0644 at most, whatever the umask: an entry others may write is
        // not loaded.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| e.to_string())
    }) {
        Ok(()) => tracing::info!(
            "Wasm code compiled in {compiled_ms:.0} ms, saved to the cache: {}",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "Wasm code compiled in {compiled_ms:.0} ms; cannot save it to the cache at {}: {e}",
            path.display()
        ),
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_cache_loads_but_never_saves() {
        let dir = std::env::temp_dir().join(format!("legate-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("entry.cwasm");
        let compiled = cached(
            Some((path.clone(), false)),
            |_| panic!("nothing to load yet"),
            || Ok(7),
            |_| panic!("a read-only cache saves nothing"),
        );
        assert_eq!(compiled.unwrap(), 7);
        assert!(!path.exists());
        std::fs::write(&path, b"entry").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = cached(
            Some((path.clone(), false)),
            |p| Ok(std::fs::read(p).unwrap().len()),
            || panic!("the entry is there"),
            |_| panic!("a read-only cache saves nothing"),
        );
        assert_eq!(loaded.unwrap(), 5);
        // An entry others may write is compiled again, not loaded.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let compiled = cached(
            Some((path.clone(), false)),
            |_| panic!("others may write this entry"),
            || Ok(9),
            |_| panic!("a read-only cache saves nothing"),
        );
        assert_eq!(compiled.unwrap(), 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_written_entries_are_swept_once_stale() {
        let dir = std::env::temp_dir().join(format!("legate-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("abc-0123.tmp-42-7");
        let entry = dir.join("abc-0123.cwasm");
        std::fs::write(&tmp, b"half").unwrap();
        std::fs::write(&entry, b"whole").unwrap();
        // A writer may still be at work on a fresh one.
        sweep(&dir, STALE);
        assert!(tmp.exists());
        sweep(&dir, std::time::Duration::ZERO);
        assert!(!tmp.exists());
        assert!(entry.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `sluice plugin dev [DIR] --plugins-dir D`: the edit → build → test → deploy loop, hands off.
//! Each round builds the project (`plugin build`), runs its fixtures (`plugin test`), and only
//! when they pass copies the component into the plugins directory under its plugin's name, where
//! a running host hot-reloads it. Then it waits for the next change to the project's sources.
//! A failed build or fixture deploys nothing: the running version stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Directories a build writes into (or tools keep), whose changes are not edits.
const NOT_SOURCES: &[&str] = &["target", "node_modules", ".venv", "build", "dist", ".git", "__pycache__"];

/// Whether a changed path is one of the project's sources.
fn is_source(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else { return false };
    let generated = rel.components().any(|c| NOT_SOURCES.contains(&c.as_os_str().to_string_lossy().as_ref()));
    let built = path.extension().is_some_and(|x| x == "wasm" || x == "tmp");
    !generated && !built
}

/// One round; Ok(true) if the new version was deployed.
async fn round(dir: &Path, fixtures: &Path, plugins_dir: &Path) -> Result<bool> {
    let dir2 = dir.to_path_buf();
    let wasm = tokio::task::spawn_blocking(move || super::build::build(&dir2)).await.context("the build stopped")??;
    if fixtures.exists() && !super::fixtures::run(&wasm, fixtures).await? {
        eprintln!("dev: fixtures failed: nothing deployed (the running version stays)");
        return Ok(false);
    }
    // The file is named after the plugin, as the host requires (`<name>.wasm`).
    let name = super::offline::load_one(&wasm).await?.manifest.name;
    std::fs::create_dir_all(plugins_dir).with_context(|| format!("cannot create {}", plugins_dir.display()))?;
    let target = plugins_dir.join(format!("{name}.wasm"));
    // Written beside, then renamed: the host never loads half a file.
    let tmp = plugins_dir.join(format!(".{name}.wasm.{}.tmp", std::process::id()));
    std::fs::copy(&wasm, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    eprintln!("dev: deployed {} (the host reloads it)", target.display());
    println!("{}", target.display());
    Ok(true)
}

pub async fn dev(dir: &Path, plugins_dir: &Path, fixtures: Option<&Path>, once: bool) -> Result<bool> {
    let dir = dir.canonicalize().with_context(|| format!("no directory {}", dir.display()))?;
    super::build::detect(&dir)?;
    let fixtures: PathBuf = fixtures.map(Path::to_path_buf).unwrap_or_else(|| dir.join("fixtures"));
    if once {
        return round(&dir, &fixtures, plugins_dir).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            for p in e.paths {
                let _ = tx.send(p);
            }
        }
    })
    .context("cannot watch the project's files")?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    loop {
        if let Err(e) = round(&dir, &fixtures, plugins_dir).await {
            eprintln!("dev: {e:#}: nothing deployed (the running version stays)");
        }
        eprintln!("dev: watching {} for changes (Ctrl-C stops)", dir.display());
        // The first change to a source, then quiet for 300 ms: an editor's save is several events.
        loop {
            let Some(p) = rx.recv().await else { bail!("the file watcher stopped") };
            if is_source(&dir, &p) {
                break;
            }
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_tools_are_not_edits() {
        let root = Path::new("/p");
        assert!(is_source(root, Path::new("/p/src/lib.rs")));
        assert!(is_source(root, Path::new("/p/app.py")));
        assert!(is_source(root, Path::new("/p/fixtures/a.json")));
        for p in
            ["/p/target/x.rs", "/p/node_modules/a/b.js", "/p/.venv/x.py", "/p/build/app.py", "/p/a.wasm", "/q/x.rs"]
        {
            assert!(!is_source(root, Path::new(p)), "{p}");
        }
    }
}

//! `sluice plugin build [DIR]`: one build command whatever the plugin's language. The language is
//! told by the project's files (as `plugin new` makes them): `Cargo.toml` → Rust (cargo,
//! wasm32-wasip2), `package.json` → JavaScript or TypeScript (`npm run build`: componentize-js,
//! after tsc for TypeScript),
//! `app.py` → Python (componentize-py through `build.sh`). The toolchain's own output goes to
//! stderr; the last line on stdout is the component's path, for scripts
//! (`cp "$(sluice plugin build | tail -1)" plugins/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

/// A project's language, as its files say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The language of the project in `dir`.
pub fn detect(dir: &Path) -> Result<Lang> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Lang::Rust)
    } else if dir.join("package.json").is_file() {
        Ok(Lang::Js)
    } else if dir.join("app.py").is_file() {
        Ok(Lang::Python)
    } else {
        bail!(
            "{} is not a plugin project: no Cargo.toml (Rust), package.json (JavaScript, TypeScript) or app.py (Python) in it — `sluice plugin new NAME --lang rust|python|js|ts` makes one",
            dir.display()
        )
    }
}

/// Builds the project in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| format!("no directory {}", dir.display()))?;
    let lang = detect(&dir)?;
    let started = SystemTime::now();
    match lang {
        Lang::Rust => {
            let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml"))?)
                .context("Cargo.toml is not valid TOML")?;
            let Some(name) = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) else {
                bail!("{}: no [package] name", dir.join("Cargo.toml").display())
            };
            step(
                &dir,
                "cargo",
                &["build", "--release", "--target", "wasm32-wasip2"],
                "the Rust toolchain (rustup.rs), then `rustup target add wasm32-wasip2`",
            )?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| dir.join("target"));
            let wasm = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
            if !wasm.is_file() {
                bail!("cargo built no {} (is the crate a `cdylib`, as `plugin new` makes it?)", wasm.display());
            }
            Ok(wasm)
        }
        Lang::Js => {
            if !dir.join("node_modules").is_dir() {
                step(&dir, "npm", &["install", "--no-audit", "--no-fund"], "Node.js 20 or later with npm")?;
            }
            step(&dir, "npm", &["run", "build"], "Node.js 20 or later with npm")?;
            newest_wasm(&dir, started)
        }
        Lang::Python => {
            if !dir.join("build.sh").is_file() {
                bail!(
                    "{}: no build.sh (the script `plugin new --lang python` makes, running componentize-py)",
                    dir.display()
                );
            }
            step(&dir, "sh", &["build.sh"], "python3 with venv and pip")?;
            newest_wasm(&dir, started)
        }
    }
}

/// Runs one toolchain command in `dir`, its output on stderr.
fn step(dir: &Path, program: &str, args: &[&str], needs: &str) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run `{program}`: this build needs {needs}"))?;
    if !status.success() {
        bail!("`{program} {}` failed in {} ({status}); its output is above", args.join(" "), dir.display());
    }
    Ok(())
}

/// The component the build just wrote in `dir`.
fn newest_wasm(dir: &Path, since: SystemTime) -> Result<PathBuf> {
    let mut built: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .filter(|(t, _)| *t >= since)
        .collect();
    built.sort();
    built.pop().map(|(_, p)| p).with_context(|| format!("the build wrote no .wasm file in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_is_told_by_the_files() {
        let dir = tempfile_dir();
        assert!(detect(&dir).unwrap_err().to_string().contains("is not a plugin project"));
        std::fs::write(dir.join("app.py"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Lang::Python);
        std::fs::write(dir.join("package.json"), "{}").unwrap();
        assert_eq!(detect(&dir).unwrap(), Lang::Js);
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Lang::Rust);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-build-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

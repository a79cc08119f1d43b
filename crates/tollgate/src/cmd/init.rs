//! `tollgate init`: the example policy pack, to edit and serve with --config.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Write the embedded example pack and configuration into `dir`.
pub fn write_example(dir: &Path) -> Result<()> {
    for (name, text) in tollgate_server::embedded::FILES {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn run(dir: &Path) -> Result<()> {
    if dir.join("tollgate.yaml").exists() {
        bail!(
            "{} already holds a tollgate.yaml; not overwriting",
            dir.display()
        );
    }
    write_example(dir)?;
    println!(
        "wrote the example incident-response pack to {}",
        dir.display()
    );
    println!("validate: tollgate policy validate {}", dir.display());
    println!("serve:    tollgate serve --config {}", dir.display());
    Ok(())
}

//! `tollgate store migrate`: apply the configured store's migrations by hand
//! (the server applies them at startup too; operators of several replicas
//! often prefer to migrate once, before rolling them).

use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Create or upgrade the store's tables (SQLite in the data directory,
    /// or PostgreSQL from `store:` in tollgate.yaml / `TOLLGATE_STORE`).
    Migrate {
        /// Config directory (tollgate.yaml); default: the built-in example.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (the SQLite file lives here).
        #[arg(long, env = "TOLLGATE_DATA", default_value = "tollgate-data")]
        data: PathBuf,
    },
}

pub fn run(cmd: StoreCmd) -> Result<()> {
    match cmd {
        StoreCmd::Migrate { config, data } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let opts = tollgate_server::Options {
                config_dir: config,
                data_dir: data,
            };
            let name = rt.block_on(tollgate_server::state::migrate_store(&opts))?;
            println!("{name}: migrations applied");
            Ok(())
        }
    }
}

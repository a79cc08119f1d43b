//! `tollgate freeze|unfreeze`: the kill switch.

use crate::client::Client;
use crate::Conn;
use anyhow::Result;

pub fn freeze(conn: &Conn) -> Result<()> {
    Client::new(conn)?.freeze()?;
    println!("frozen: every agent decision now denies");
    Ok(())
}

pub fn unfreeze(conn: &Conn) -> Result<()> {
    Client::new(conn)?.unfreeze()?;
    println!("unfrozen");
    Ok(())
}

//! An ordinary MCP server of incident-response tools, for the demo, the docs
//! and the MCP gateway's tests. It knows nothing of Tollgate: it checks one
//! API token (injected by whoever runs it) and acts on a JSON state file.

pub mod server;
pub mod state;

pub use server::{serve_http, serve_stdio, ExampleTools, Settings, TOKEN_ENV};
pub use state::{StateFile, ToolError, World};

//! `pacsgrid access new-key`: makes an API key for a program, prints it once, and prints the
//! `[[access.http.api_key]]` entry (with the key's hash, never the key) to paste into the
//! node's configuration.

use clap::{Args, Subcommand};
use pacsgrid_access::{new_api_key, Role};
use std::process::ExitCode;

/// `pacsgrid access ...`.
#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Makes a new random API key and prints it with the configuration entry that admits it.
    NewKey(NewKeyArgs),
}

/// Arguments of `pacsgrid access new-key`.
#[derive(Args, Debug)]
pub struct NewKeyArgs {
    /// The program's name, as audit records will show it.
    #[arg(long)]
    name: String,
    /// A role of the key (repeat for several): admin, radiologist, clinician, researcher,
    /// modality.
    #[arg(long = "role", value_parser = parse_role)]
    roles: Vec<Role>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
        format!("unknown role {s:?}; roles: {}", names.join(", "))
    })
}

/// Runs an access subcommand.
pub fn run(cmd: AccessCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AccessCommand::NewKey(args) => new_key(args),
    }
}

fn toml_string(s: &str) -> String {
    // TOML basic strings share JSON's escapes for what a name can hold.
    serde_json::Value::String(s.to_string()).to_string()
}

fn new_key(args: NewKeyArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.trim();
    if name.is_empty() {
        anyhow::bail!("--name must not be empty");
    }
    let k = new_api_key()?;
    let roles: Vec<String> = args.roles.iter().map(|r| toml_string(r.name())).collect();
    println!("# API key for {name}: give it to the program now; it is not stored anywhere.");
    println!("# The program sends it as `Authorization: Bearer <key>` (or `X-API-Key: <key>`).");
    println!("#   {}", k.key);
    println!("#");
    println!("# Add this to the node's configuration and restart it:");
    println!("[[access.http.api_key]]");
    println!("name = {}", toml_string(name));
    println!("sha256 = \"{}\"", k.sha256);
    println!("roles = [{}]", roles.join(", "));
    if args.roles.is_empty() {
        eprintln!("pacsgrid: warning: no --role given: the key authenticates but may do nothing");
    }
    Ok(ExitCode::SUCCESS)
}

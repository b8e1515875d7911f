//! The `CNI_*` environment (`Env::from_lookup`): the container id names a state file, so it
//! must never hold a path separator once validated.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshcap_cni::env::{validate_container_id, validate_ifname, Command, Env};

#[derive(Arbitrary, Debug)]
struct Input {
    command: Option<Vec<u8>>,
    container_id: Option<Vec<u8>>,
    netns: Option<Vec<u8>>,
    ifname: Option<Vec<u8>>,
    args: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    state_dir: Option<Vec<u8>>,
    command_pick: u8,
}

const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];

fuzz_target!(|input: Input| {
    let command = match &input.command {
        Some(c) if input.command_pick.is_multiple_of(4) => Some(c.clone()),
        Some(_) => Some(COMMANDS[input.command_pick as usize % COMMANDS.len()].into()),
        None => None,
    };
    let lookup = |name: &str| -> Option<OsString> {
        let v = match name {
            "CNI_COMMAND" => &command,
            "CNI_CONTAINERID" => &input.container_id,
            "CNI_NETNS" => &input.netns,
            "CNI_IFNAME" => &input.ifname,
            "CNI_ARGS" => &input.args,
            "CNI_PATH" => &input.path,
            "MESHCAP_STATE_DIR" => &input.state_dir,
            _ => return None,
        };
        v.clone().map(OsString::from_vec)
    };
    if let Ok(env) = Env::from_lookup(lookup) {
        // Only the commands that act on an attachment validate (and use) its id and ifname;
        // STATUS, GC and VERSION carry whatever the runtime set, unused.
        if !matches!(env.command, Command::Add | Command::Check | Command::Del) {
            return;
        }
        assert!(validate_container_id(&env.container_id).is_ok());
        assert!(!env.container_id.contains(['/', '\0', '@']) && env.container_id != "..");
        assert!(validate_ifname(&env.ifname).is_ok());
        assert!(!env.ifname.contains(['/', '\0']) && env.ifname.len() < 16);
    }
});

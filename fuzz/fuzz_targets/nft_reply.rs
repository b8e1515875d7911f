//! Bytes as the kernel's nf_tables netlink socket could return them -> meshcap-nft's reply
//! parsing: message splitting, attribute walking (nested too), string/integer/userdata
//! decoding, and the xtables table-shape parser DEL relies on. None may panic or read past
//! its input (see meshcap_fuzz::check_nft_reply).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshcap_fuzz::check_nft_reply(data);
});

//! Fuzz target: the configuration reader. The body is [`leasehold_fuzz::config_load`]; this file only hands
//! it AFL++'s inputs (in persistent mode). Run by `make fuzz`.

fn main() {
    afl::fuzz!(|data: &[u8]| leasehold_fuzz::config_load(data));
}

//! Fuzz target: the connection state machine. The body is [`leasehold_fuzz::http_conn`]; this file only hands
//! it AFL++'s inputs (in persistent mode). Run by `make fuzz`.

fn main() {
    afl::fuzz!(|data: &[u8]| leasehold_fuzz::http_conn(data));
}

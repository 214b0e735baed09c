//! Fuzz target: the IPC frame decoder and message types. The body is [`leasehold_fuzz::ipc_frame`]; this file only hands
//! it AFL++'s inputs (in persistent mode). Run by `make fuzz`.

fn main() {
    afl::fuzz!(|data: &[u8]| leasehold_fuzz::ipc_frame(data));
}

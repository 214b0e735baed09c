//! Fuzz target: the journal record codec and record decoder. The body is [`leasehold_fuzz::journal_record`]; this file only hands
//! it AFL++'s inputs (in persistent mode). Run by `make fuzz`.

fn main() {
    afl::fuzz!(|data: &[u8]| leasehold_fuzz::journal_record(data));
}

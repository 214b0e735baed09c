//! Fuzz target: the HTTP/1.1 request parser. The body is [`leasehold_fuzz::http_parse`]; this file only hands
//! it AFL++'s inputs (in persistent mode). Run by `make fuzz`.

fn main() {
    afl::fuzz!(|data: &[u8]| leasehold_fuzz::http_parse(data));
}

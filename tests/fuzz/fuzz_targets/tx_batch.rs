#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyreg_tests::fuzz::tx_batch(data));

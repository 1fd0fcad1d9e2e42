#!/usr/bin/env python3
"""Exclusive shares of perf samples by the first matching bucket.

    tests/profile/stack-buckets.py PERF_SCRIPT.txt

Like stack-shares.py (same input), but every sample lands in exactly one
bucket: the first in BUCKETS whose pattern matches any frame of its stack,
else "other". The shares add up to 100 %; docs/benchmarks.md (session 6)
quotes them.
"""
import collections
import importlib.util
import pathlib
import re
import sys

BUCKETS = [
    ("verify", r"verify_batch|zip215"),
    ("rocks write", r"WriteImpl|write_block|WriteBatch|rocksdb_write"),
    ("rocks read/get_node", r"get_node|rocksdb::DBImpl::Get|MultiGet|rocksdb_get|head_value|HeadValues"),
    ("tree apply", r"tree::apply|BatchBuilder|TreeState"),
    ("execute other", r"execute_block|execute_hashed"),
    ("tx root/hash", r"tx_root|subtree_root|Transaction::hash|tx_hashes"),
    ("check_against/validate", r"validate_prechecked|check_against|check_header"),
    ("propose", r"Ledger.*propose|Driver::propose"),
    ("commit other", r"Ledger.*commit|Driver::commit"),
    ("admission other", r"admission::admit|submit_batch|decode_tx_batch"),
    ("mempool/pending", r"mempool|Mempool|pending_txs|rebuild"),
    ("gossipsub", r"gossipsub"),
    ("yamux (with noise)", r"yamux"),
    ("libp2p other", r"libp2p"),
    ("http", r"axum|hyper|tower"),
    ("driver other", r"driver::"),
    ("tokio", r"tokio"),
    ("kernel/syscall", r"entry_SYSCALL|syscall|epoll|schedule|do_syscall|asm_"),
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # One parser for perf script output: stack-shares.py's.
    path = pathlib.Path(__file__).with_name("stack-shares.py")
    spec = importlib.util.spec_from_file_location("stack_shares", path)
    shares = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shares)
    stacks = list(shares.samples(sys.argv[1]))
    if not stacks:
        sys.exit("no samples")
    compiled = [(name, re.compile(pattern)) for name, pattern in BUCKETS]
    counts = collections.Counter()
    for stack in stacks:
        bucket = next(
            (name for name, p in compiled if any(p.search(f) for f in stack)), "other"
        )
        counts[bucket] += 1
    print(f"samples {len(stacks)}")
    for name in [n for n, _ in BUCKETS] + ["other"]:
        print(f"{100 * counts[name] / len(stacks):6.1f}%  {name}")


if __name__ == "__main__":
    main()

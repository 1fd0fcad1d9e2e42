#!/usr/bin/env python3
"""Share of perf samples whose call stack holds a frame matching each pattern.

    tests/profile/stack-shares.py PERF_SCRIPT.txt PATTERN...

PERF_SCRIPT.txt is `perf script -F comm,tid,ip,sym` output (profile-nodes.sh
writes it). Each PATTERN is a Python regular expression matched against the
symbol of every frame; a sample counts once per pattern (inclusive shares,
so rows overlap). A PATTERN of the form `A&&B` counts the samples whose stack
holds a frame matching A and one matching B (say, the kernel's page zeroing
under one caller: `clear_page_erms&&PutLengthPrefixedSlice`). Also prints the
25 most frequent leaf symbols.
"""
import collections
import re
import sys


def samples(path):
    stack = []
    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line.strip():
                if stack:
                    yield stack
                stack = []
            elif line.startswith((" ", "\t")):
                parts = line.strip().split(" ", 1)
                stack.append(parts[-1])
            else:
                stack = []
    if stack:
        yield stack


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    stacks = list(samples(sys.argv[1]))
    if not stacks:
        sys.exit("no samples")
    patterns = [(p, [re.compile(part) for part in p.split("&&")]) for p in sys.argv[2:]]
    print(f"samples {len(stacks)}")
    for text, parts in patterns:
        hits = sum(
            1 for s in stacks if all(any(part.search(f) for f in s) for part in parts)
        )
        print(f"{100 * hits / len(stacks):6.1f}%  {text}")
    leaves = collections.Counter(s[0][:90] for s in stacks)
    print("top leaves:")
    for leaf, count in leaves.most_common(25):
        print(f"{100 * count / len(stacks):6.1f}%  {leaf}")


if __name__ == "__main__":
    main()

"""``mixroute keys new`` and ``mixroute keys hash``: the config only ever holds hashes."""

from __future__ import annotations

import argparse
import sys

from mixroute.access.keys import hash_key, new_key


def run(args: argparse.Namespace) -> int:
    if args.keys_command == "new":
        key = new_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        print("Give the key to its user (it is not stored anywhere); put the hash in the config.")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("no key given (pass --key or one line on stdin)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0

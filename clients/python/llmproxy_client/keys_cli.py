"""The `llmproxy keys create` command: a new caller API key, shown once, and its config hash."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")


def key_id(text: str) -> str:
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits and . _ : @ -")
    return text


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage caller API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser(
        "create", help="print a new random key (once) and the hash to put in the config"
    )
    create.add_argument("--id", type=key_id, default="my-key", help="the key id for the config")
    create.add_argument("--json", action="store_true", help="print {id, key, hash} as JSON")
    create.set_defaults(handler=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    from llmproxy.server.security.api_keys import generate_key, hash_key

    key = generate_key()
    digest = hash_key(key)
    if args.json:
        print(json.dumps({"id": args.id, "key": key, "hash": digest}))
        return 0
    print(key)
    print(
        "\nThe key above is shown only this once: give it to the caller now.\n"
        "The gateway stores only its hash; add this under auth.api_keys:\n\n"
        f"  - id: {args.id}\n"
        f'    hash: "{digest}"',
        file=sys.stderr,
    )
    return 0

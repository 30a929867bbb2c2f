#!/usr/bin/env python3
"""Example automation for the `Vivo360` system: "create a user" from one CSV row.

The bot-agent runs this once per CSV row, with the row as a JSON object on stdin
(as argv, never through a shell). Exit 0 means the row succeeded; anything
else fails the row, and the last lines of stderr become its error.

The proof of concept's real Vivo360 automation (and its example.csv) were not
attached to the specification, so this stands in for it: it checks the row,
simulates the form filling with a short pause, and appends the created user to
$ORQ_DEMO_OUT (one JSON line per user) when that variable is set.
"""
import json
import os
import sys
import time

row = json.load(sys.stdin)
missing = [f for f in ("name", "email", "profile") if not row.get(f)]
if missing:
    print(f"missing field(s): {', '.join(missing)}", file=sys.stderr)
    sys.exit(2)
if "@" not in row["email"]:
    print(f"invalid e-mail address: {row['email']}", file=sys.stderr)
    sys.exit(3)

time.sleep(float(os.environ.get("ORQ_DEMO_DELAY", "0.3")))

out = os.environ.get("ORQ_DEMO_OUT")
if out:
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"job": os.environ.get("ORQ_JOB_ID"), "user": row}) + "\n")
print(f"created user {row['email']} with profile {row['profile']}")

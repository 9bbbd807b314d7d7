#!/usr/bin/env python3
"""Static checks of deploy/Dockerfile, since no image can be built here.

Usage: check_dockerfile.py DOCKERFILE HOOK_PORT ADMIN_PORT
Checks: multi-stage; every base image pinned (an explicit version tag or a digest, never
:latest or untagged); the final stage runs as a numeric non-root USER; both ports EXPOSEd;
the entrypoint is `keeptyping serve` in exec form (no shell needed); the release profile is
built with --locked; the runtime stage has no shell-form RUN.
"""

import json
import re
import sys


def instructions(text):
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def main():
    path, hook_port, admin_port = sys.argv[1], sys.argv[2], sys.argv[3]
    ins = list(instructions(open(path).read()))
    failures = []

    def check(cond, what):
        print(("  ok    " if cond else "  FAIL  ") + what)
        if not cond:
            failures.append(what)

    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    check(len(froms) >= 2, f"multi-stage build ({len(froms)} stages)")
    for i in froms:
        image = ins[i][1].split()[0]
        name_tag = image.split("@")[0]
        last = name_tag.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        pinned = "@sha256:" in image or (tag and tag != "latest")
        check(pinned, f"base image {image} is pinned (tag or digest, not latest)")
    final = ins[froms[-1]:]
    users = [r for w, r in final if w == "USER"]
    user = users[-1].split(":")[0] if users else "root"
    check(user.isdigit() and int(user) != 0, f"final stage runs as a numeric non-root USER ({user})")
    exposed = set()
    for w, r in ins:
        if w == "EXPOSE":
            exposed |= {p.split("/")[0] for p in r.split()}
    check({hook_port, admin_port} <= exposed, f"EXPOSE {hook_port} and {admin_port} (found {sorted(exposed)})")
    entry = [r for w, r in final if w == "ENTRYPOINT"]
    try:
        argv = json.loads(entry[-1]) if entry else []
    except json.JSONDecodeError:
        argv = []
    check(len(argv) >= 2 and argv[0].endswith("/keeptyping") and argv[1] == "serve",
          f"ENTRYPOINT is `keeptyping serve` in exec form ({argv})")
    check(not any(w == "RUN" for w, _ in final), "runtime stage runs nothing (no shell needed)")
    builds = [r for w, r in ins if w == "RUN" and "cargo build" in r]
    check(any("--release" in r and "--locked" in r for r in builds), "release build with --locked")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

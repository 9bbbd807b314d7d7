#!/usr/bin/env bash
# Every relative link in README.md and docs/*.md resolves: the file or directory exists and, for a
# `#anchor` into a markdown file (or within the same file), that file has a heading with that
# GitHub-style anchor (or an explicit <a id/name>). Links to http(s) and mailto are not fetched.
# Needs only bash and python3. Prints each broken link, then `doc-links: N passed, M failed`.
# Usage: bash .ci/doc-links.sh [FILE.md ...]   (default: README.md docs/*.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
    set -- README.md docs/*.md
fi
exec python3 - "$@" <<'PY'
import re
import sys
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:id|name)=\"([^\"]+)\"", re.I)
HTML_LINK = re.compile(r"<(?:a|img)\s+[^>]*(?:href|src)=\"([^\"]+)\"", re.I)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def strip_code_spans(line):
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)


def slug(heading):
    """GitHub's heading anchor: rendered text, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML tags
    text = text.replace("`", "")  # emphasis markers (*) go with the punctuation below
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found, seen, fence = set(), {}, False
        for line in path.read_text(encoding="utf-8").split("\n"):
            if FENCE.match(line):
                fence = not fence
                continue
            if fence:
                continue
            found.update(HTML_ANCHOR.findall(line))
            m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def links(path):
    fence = False
    for no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if FENCE.match(line):
            fence = not fence
            continue
        if fence:
            continue
        line = strip_code_spans(line)
        targets = [m.group(1) for m in INLINE.finditer(line)]
        targets += [m.group(1) for m in REFDEF.finditer(line)]
        targets += HTML_LINK.findall(line)
        for t in targets:
            yield no, t.strip("<>")


def check(src, target):
    """None when the link resolves, else why not."""
    file_part, _, anchor = target.partition("#")
    dest = (src.parent / file_part).resolve() if file_part else src.resolve()
    root = Path.cwd().resolve()
    if file_part and not dest.exists():
        return f"no such file {dest.relative_to(root) if dest.is_relative_to(root) else dest}"
    if anchor and dest.suffix == ".md" and dest.is_file():
        if anchor not in anchors(dest):
            return f"no heading with anchor #{anchor} in {dest.relative_to(root)}"
    return None


passed = failed = 0
for name in sys.argv[1:]:
    src = Path(name)
    if not src.is_file():
        print(f"doc-links: FAIL {name}: file not found")
        failed += 1
        continue
    for no, target in links(src):
        if EXTERNAL.match(target) or target.startswith("//"):
            continue
        why = check(src, target)
        if why:
            print(f"doc-links: FAIL {name}:{no}: ({target}): {why}")
            failed += 1
        else:
            passed += 1
print(f"doc-links: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

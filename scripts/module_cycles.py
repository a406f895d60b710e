#!/usr/bin/env python3
"""Import cycles between the files (modules) of each crate.

Usage: python3 scripts/module_cycles.py [crate-src-dir ...]
       (default: the src/ of every workspace crate)

A file `a.rs` (module `a`) depends on module `b` when it names `crate::b`
(in a `use`, a path or a doc link outside comments) or, for a child module,
`super::b`. Only the top-level modules of a crate are nodes (`a/x.rs`
counts as `a`). Prints each crate's dependency order and any cycle, and
exits 1 if a cycle exists. Tests (`#[cfg(test)]` blocks after the marker
`mod tests`) are ignored: a test module may use anything.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["mq-core/src", "mq-rabbit/src", "mq-kafka/src", "mq-sqs/src", "src", "mq-cli/src", "mq-outbox/src"]


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        if re.match(r"\s*#\[cfg\(test\)\]", line):
            break  # the tests module sits at the end of a file by convention
        lines.append(re.sub(r"//.*", "", line))
    return "\n".join(lines)


def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)
            parts = rel[:-3].split(os.sep)
            top = parts[0]
            if top in ("lib", "main") or top == "tests" or parts[-1] == "tests":
                continue
            mods.setdefault(top, []).append(path)
    return mods


def edges(src, mods):
    graph = {m: set() for m in mods}
    for m, paths in mods.items():
        for path in paths:
            text = strip(open(path, encoding="utf-8").read())
            names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text, flags=re.S):
                names |= set(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)", group))
            if os.path.dirname(path) != src:  # a child module: super:: is its parent
                pass
            else:
                names |= set(re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", text)) - {"super"}
            for n in names:
                if n in graph and n != m:
                    graph[m].add(n)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def order(graph):
    done, out = set(), []
    while len(done) < len(graph):
        ready = sorted(n for n in graph if n not in done and graph[n] <= done)
        if not ready:
            break
        out.append(ready)
        done |= set(ready)
    return out


def main():
    dirs = sys.argv[1:] or DEFAULT
    failed = False
    for d in dirs:
        src = os.path.join(ROOT, d)
        if not os.path.isdir(src):
            continue
        graph = edges(src, modules(src))
        cycle = find_cycle(graph)
        if cycle:
            failed = True
            print(f"{d}: CYCLE {' -> '.join(cycle)}")
        else:
            layers = " < ".join("{" + ", ".join(l) + "}" if len(l) > 1 else l[0] for l in order(graph))
            print(f"{d}: no cycle; {layers}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

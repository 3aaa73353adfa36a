#!/usr/bin/env python3
"""Import circles: none between the workspace's crates, and none between sibling modules of any
crate (`a` uses `b` and `b` uses `a`, at any depth of `a` and `b`), counting `use crate::…`,
`crate::…` paths and `super::…`/`self::…` paths. Test modules (`tests.rs`, `mod tests`) may use
anything. Prints each circle it finds and exits 1; prints a one-line summary and exits 0 otherwise.

    python3 scripts/check-imports.py
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["common", "proto", "service", "agent", "coordinator", "cli", "bench"]


def module_path(src: pathlib.Path, f: pathlib.Path):
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[0] == "bin":
        return None  # binaries are roots of their own
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    """Drops inline `#[cfg(test)] mod tests { … }` bodies."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def split_group(body: str):
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def references(text: str, here: tuple):
    """Module paths (tuples) this file names."""
    text = re.sub(r"//[^\n]*", "", strip_tests(text))
    refs = []
    for m in re.finditer(r"\b(crate|super|self)((?:::super)*)::(\{[^;]*?\}|\w+(?:::\w+)*)", text):
        head, supers, rest = m.group(1), m.group(2), m.group(3)
        if head == "crate":
            base = ()
        elif head == "self":
            base = here
        else:
            n = 1 + supers.count("super")
            base = here[: max(len(here) - n, 0)]
        if rest.startswith("{"):
            for item in split_group(rest[1:-1]):
                refs.append(base + tuple(p for p in re.split(r"::", item.split(" as ")[0]) if re.match(r"^\w+$", p)))
        else:
            refs.append(base + tuple(rest.split("::")))
    return refs


def find_cycle(graph):
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if color.get(m) is None:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if color.get(n) is None:
            c = visit(n)
            if c:
                return c
    return None


def check_crate(crate: str):
    src = ROOT / crate / "src"
    files = {}
    for f in sorted(src.rglob("*.rs")):
        p = module_path(src, f)
        if p is None:
            continue
        files[f] = p
    modules = set(files.values())
    # every prefix of a module is a module
    for p in list(modules):
        for i in range(len(p)):
            modules.add(p[:i])
    siblings = {}  # parent -> {child -> set(child)}
    for f, here in files.items():
        if "tests" in here:
            continue
        for ref in references(f.read_text(), here):
            # the longest module prefix of the reference
            target = ()
            for i in range(1, len(ref) + 1):
                if ref[:i] in modules:
                    target = ref[:i]
            k = 0
            while k < min(len(here), len(target)) and here[k] == target[k]:
                k += 1
            if k == len(here) or k == len(target):
                continue  # one contains the other
            parent, a, b = here[:k], here[k], target[k]
            siblings.setdefault(parent, {}).setdefault(a, set()).add(b)
    circles = []
    for parent, graph in siblings.items():
        c = find_cycle(graph)
        if c:
            where = "::".join(parent) or "crate root"
            circles.append(f"{crate}: under {where}: " + " -> ".join(c))
    return circles, len(files)


def check_crates():
    graph = {}
    for crate in CRATES:
        toml = (ROOT / crate / "Cargo.toml").read_text()
        deps = toml.split("[dependencies]", 1)[-1].split("\n[", 1)[0]
        graph[crate] = {c for c in CRATES if re.search(rf"^factotum-{c}\b", deps, re.M)}
    c = find_cycle(graph)
    return ([f"crates: {' -> '.join(c)}"] if c else []), graph


def main():
    circles, graph = check_crates()
    if graph["agent"] & {"coordinator"} or graph["coordinator"] & {"agent"}:
        circles.append("crates: the agent and the coordinator must meet only in proto")
    files = 0
    for crate in CRATES:
        found, n = check_crate(crate)
        circles += found
        files += n
    for c in circles:
        print("import circle:", c)
    if circles:
        return 1
    print(f"no import circle: {len(CRATES)} crates, {files} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

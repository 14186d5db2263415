"""The layout's own promises (docs/architecture.md), checked on the source tree.

- the modules of src/gateway form layers: no circle of includes among them
  (a module is foo.c with foo.h and its private foo-int.h; a types-only foo-t.h
  belongs to nobody's circle);
- the state lock lives in the registry alone (registry.c, registry_job.c and their
  private registry-int.h);
- no source file in src/ is over 1,000 lines;
- docs/architecture.md names only files that exist;
- meson.build lists every C source of src/ and tests/unit (no silent guards).
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_of(name):
    stem = name.rsplit(".", 1)[0]
    if stem.endswith("-int"):
        return stem[:-len("-int")]
    return None if stem.endswith("-t") else stem


def include_graph(directory):
    """module -> set of modules of the same directory that it includes."""
    local = {p.name for p in directory.iterdir() if p.suffix in (".c", ".h")}
    graph = {}
    for p in directory.iterdir():
        if p.suffix not in (".c", ".h"):
            continue
        mod = module_of(p.name)
        if mod is None:
            continue
        deps = graph.setdefault(mod, set())
        for inc in INCLUDE.findall(p.read_text()):
            if inc in local:
                dep = module_of(inc)
                if dep and dep != mod:
                    deps.add(dep)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                cyc = visit(d)
                if cyc:
                    return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gateway_modules_form_layers():
    cycle = find_cycle(include_graph(SRC / "gateway"))
    assert cycle is None, "include circle in src/gateway: " + " -> ".join(cycle)


def test_agent_and_lib_modules_form_layers():
    for d in ("agent", "lib"):
        cycle = find_cycle(include_graph(SRC / d))
        assert cycle is None, f"include circle in src/{d}: " + " -> ".join(cycle)


def test_lib_includes_nothing_from_the_binaries():
    own = {p.name for p in (SRC / "lib").iterdir()}
    for p in (SRC / "lib").glob("*.[ch]"):
        for inc in INCLUDE.findall(p.read_text()):
            assert inc in own, f"{p.relative_to(ROOT)} includes {inc}, which is not in src/lib"


def test_state_lock_only_in_registry():
    users = sorted(str(p.relative_to(ROOT)) for p in SRC.rglob("*.[ch]")
                   if "pthread_rwlock" in p.read_text())
    assert users == ["src/gateway/registry-int.h", "src/gateway/registry.c"]
    takers = sorted(str(p.relative_to(ROOT)) for p in SRC.rglob("*.c")
                    if re.search(r"\b(rdlock|wrlock)\(", p.read_text()))
    assert takers == ["src/gateway/registry.c", "src/gateway/registry_job.c"]


def test_no_source_file_over_1000_lines():
    big = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.[ch]")
           if (n := len(p.read_text().splitlines())) > 1000}
    assert not big, f"split these by what they own: {big}"


def test_architecture_names_existing_files():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:src|tests|docs|contrib|scripts|bench)/[A-Za-z0-9_./-]+)`", doc))
    assert named, "docs/architecture.md names no files"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_meson_lists_every_source():
    build = (ROOT / "meson.build").read_text()
    assert "fs.exists" not in build, "meson.build must fail on a missing file, not skip it"
    for d in ("src/lib", "src/gateway", "src/agent", "tests/unit"):
        for p in sorted((ROOT / d).glob("*.c")):
            stem = p.stem[len("test_"):] if d == "tests/unit" else p.name
            if d == "tests/unit":
                assert re.search(rf"['\"]{re.escape(stem)}['\"]", build), \
                    f"{p.relative_to(ROOT)} is not built by meson.build"
            else:
                assert f"'{p.name}'" in build, f"{p.relative_to(ROOT)} is not built by meson.build"

"""The code a command runs, derived from the import graph (the workflow's code inputs).

A rule lists the package files its command can execute as inputs, so that editing
a module reruns exactly the rules whose commands import it. The list is derived,
not hand-written: :func:`command_sources` starts at the command's handler
function (``saca <command>`` -> ``cmd_*`` in :mod:`saca.commands`) and the CLI's
entry (``cli.main``, ``cli.check_args``) and follows imports:

* ``from saca.m import f`` with ``f`` a top-level function reaches ``m``'s top
  level and ``f`` (with the same-module functions ``f`` names), not the rest of
  ``m``: the command modules hold several commands each;
* any other import (a module, a class, a constant) reaches the whole module, every
  import in its file included (a lazy import inside any of its functions may run).

The core every command runs (``saca/__init__.py``, ``cli.py``, ``__main__.py``)
is always included. An over-approximation at these granularities: a rule may
rerun for a module its command could import but did not need, never the
opposite (short of ``importlib`` with computed names, which the package does
not use outside ``cli.build_parser``). Parsing uses :mod:`ast` only: nothing is
imported or executed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from saca import SacaError

PACKAGE_DIR = Path(__file__).resolve().parent
CORE = ("saca", "saca.cli", "saca.__main__")


@lru_cache(maxsize=None)
def module_file(name: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The file of module ``name`` (``saca.x.y``) under the package directory, or None if it is not one."""
    parts = name.split(".")
    if parts[0] != "saca":
        return None
    base = root.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@lru_cache(maxsize=None)
def _top_functions(module: str, root: Path) -> dict:
    path = module_file(module, root)
    if path is None:
        return {}
    return {n.name: n for n in _parse(path).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@lru_cache(maxsize=None)  # the nodes of the cached trees: one walk each per process
def _import_nodes(node) -> tuple:
    return tuple(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))


@lru_cache(maxsize=None)
def _names(node) -> frozenset:
    return frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))


def _imports(nodes, current: str, is_package: bool, root: Path) -> set:
    """What the Import / ImportFrom statements among ``nodes`` (walked recursively) reach: a module name (the
    whole module may run) or ``(module, function)`` for ``from saca.m import f`` with ``f`` a top-level function
    of ``saca.m`` (importing it runs the module's top level, calling it runs ``f``)."""
    out: set = set()
    pkg = current if is_package else current.rpartition(".")[0]
    for node in nodes:
        for n in _import_nodes(node):
            if isinstance(n, ast.Import):
                for alias in n.names:
                    if alias.name.split(".")[0] == "saca":
                        out.add(alias.name)
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (n.level - 1)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                if mod.split(".")[0] != "saca" or module_file(mod, root) is None:
                    continue
                funcs = _top_functions(mod, root)
                for alias in n.names:
                    if module_file(f"{mod}.{alias.name}", root) is not None:  # `from saca.policy import model`
                        out.add(f"{mod}.{alias.name}")
                        out.add((mod, None))
                    elif alias.name in funcs:
                        out.add((mod, alias.name))
                    else:  # a class, a constant, `*`: the whole module
                        out.add(mod)
    # importing saca.a.b runs the top level of saca/__init__ and saca/a/__init__ too
    for m in list(out):
        name = m if isinstance(m, str) else m[0]
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            out.add((".".join(parts[:k]), None))
    return {m for m in out if module_file(m if isinstance(m, str) else m[0], root) is not None}


@lru_cache(maxsize=None)
def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise SacaError(f"{path}: cannot parse ({err})") from err


@lru_cache(maxsize=None)  # every command's walk meets the same modules: each node is analysed once per process
def _edges(node, root: Path) -> frozenset:
    """What a node reaches: a whole module, every import in its file; ``(module, function)``, the imports of the
    module's top level (classes with their methods included), of the function, and of the same-module functions
    either names, transitively; ``(module, None)``, the top level's."""
    module, function = (node, "*") if isinstance(node, str) else node
    path = module_file(module, root)
    if path is None:
        raise SacaError(f"module {module!r} is not a file of the saca package under {root}")
    tree = _parse(path)
    is_pkg = path.name == "__init__.py"
    if function == "*":
        return frozenset(_imports(tree.body, module, is_pkg, root))
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if function is not None and function not in funcs:
        raise SacaError(f"{module}: no top-level function {function!r}")
    # the top level runs on import and its classes' methods whenever used: what they name may run, and so may
    # what the function names
    seen, todo = set(), sorted(name for node in top for name in _names(node) if name in funcs)
    todo += [function] if function is not None else []
    body = list(top)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        body.append(funcs[f])
        todo += sorted(_names(funcs[f]) & funcs.keys())  # called or passed on (a callback)
    return frozenset(_imports(body, module, is_pkg, root))


def reachable(start, root: Path = PACKAGE_DIR) -> set[str]:
    """The modules whose code can run from ``start`` (module names, or ``(module, function)`` pairs)."""
    seen: set = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo += [e for e in _edges(node, root) if e not in seen]
    return {n if isinstance(n, str) else n[0] for n in seen}


@lru_cache(maxsize=1)
def _handlers() -> dict:
    """``{command: (module, function)}`` of every ``saca`` command (the CLI parser, built once)."""
    from saca.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: (p.get_default("func").__module__, p.get_default("func").__name__) for name, p in sub.choices.items()}


def command_handler(command: str) -> tuple[str, str]:
    """``(module, function)`` of the handler of ``saca <command>``; an unknown command is an error naming the known."""
    handlers = _handlers()
    if command not in handlers:
        raise SacaError(f"unknown saca command {command!r}; known: {', '.join(sorted(handlers))}")
    return handlers[command]


def command_sources(command: str, root: Path = PACKAGE_DIR) -> list[str]:
    """The package files ``saca <command>`` can execute, as paths relative to the repository (``src/saca/...``),
    sorted. See the module docstring."""
    module, function = command_handler(command)
    mods = reachable([(module, function), *((m, None) for m in CORE), ("saca.cli", "main"), ("saca.cli", "check_args")],
                     root)
    repo = root.parent.parent
    files = {module_file(m, root) for m in mods}
    return sorted(str(f.relative_to(repo)) if f.is_relative_to(repo) else str(f) for f in files if f is not None)


def package_digest(root: Path = PACKAGE_DIR) -> str:
    """sha256 over the path and bytes of every ``.py`` file of the package: what :func:`command_sources` reads."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=None)  # one read (or derivation) per process: the workflow asks for every command's list
def _sources_table(cache: Path, root: Path) -> dict:
    """``{command: files}`` of every ``saca`` command, from ``cache`` when it holds this :func:`package_digest`,
    else derived and written there (atomically: a concurrent reader sees the old table or the new one). A cache
    that cannot be read or written is only a cache."""
    digest = package_digest(root)
    try:
        table = json.loads(cache.read_text())
        if table.get("digest") == digest:
            return table["sources"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    sources = {c: command_sources(c, root) for c in sorted(_handlers())}
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"digest": digest, "sources": sources}, sort_keys=True))
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)
    return sources


def cached_command_sources(command: str, cache: Path, root: Path = PACKAGE_DIR) -> list[str]:
    """:func:`command_sources`, kept in the JSON file ``cache`` under the package's :func:`package_digest`: every
    Snakemake process of a run (each SLURM job parses the workflow twice) reads the lists instead of walking the
    import graph again; an edit to any package file changes the digest and the lists are derived afresh."""
    table = _sources_table(cache, root)
    if command not in table:
        command_handler(command)  # an unknown command: the error naming the known ones
    return list(table[command])

#!/usr/bin/env python3
"""libgodwit.so exports its public API and nothing else.

Usage: check_exports.py NM LIBGODWIT.SO INCLUDE_DIR MAP

Compares three lists, each of which a change can forget to update:
  - the symbols the shared library defines (nm -D --defined-only),
  - the functions and variables the public headers declare,
  - the names lib/libgodwit.map lists.
An exported symbol no public header declares is an internal leaking into
the ABI; a declared one that is not exported misses GW_API or its map
entry (the rule is at the top of lib/libgodwit.map); a map entry that is
not exported was renamed or removed.
"""
import pathlib
import re
import subprocess
import sys


def strip_comments(text):
    text = re.sub(r'/\*.*?\*/', ' ', text, flags=re.S)
    return re.sub(r'//[^\n]*', ' ', text)


def public_declarations(include_dir):
    """{name: header} for every function and variable the headers declare."""
    decls = {}
    for header in sorted(pathlib.Path(include_dir).glob('*.h')):
        text = strip_comments(header.read_text())
        text = re.sub(r'\\\n', ' ', text)
        text = re.sub(r'#ifdef __cplusplus.*?#endif', ' ', text, flags=re.S)
        text = re.sub(r'^\s*#[^\n]*', ' ', text, flags=re.M)
        # Struct and enum bodies hold members, not declarations.
        while True:
            flat = re.sub(r'\{[^{}]*\}', ' ', text)
            if flat == text:
                break
            text = flat
        for decl in text.split(';'):
            decl = ' '.join(decl.split())
            if not decl or re.match(r'(static|typedef)\b', decl):
                continue
            func = re.search(r'\b(gw_\w+)\s*\(', decl)
            var = re.search(r'\bextern\b.*\b(gw_\w+)$', decl)
            name = func.group(1) if func else var.group(1) if var else None
            if name:
                decls[name] = header.name
    return decls


def exported_symbols(nm, lib, version_nodes):
    out = subprocess.run([nm, '-D', '--defined-only', '--format=posix', lib],
                         check=True, capture_output=True, text=True).stdout
    names = {line.split()[0].split('@')[0] for line in out.splitlines() if line.strip()}
    return names - version_nodes


def map_entries(path):
    """(version node names, global names) of a linker version script."""
    text = strip_comments(pathlib.Path(path).read_text())
    nodes = set(re.findall(r'([\w.]+)\s*\{', text))
    names = set()
    for body in re.findall(r'\{(.*?)\}', text, flags=re.S):
        scope = 'global'
        for entry in body.split(';'):
            entry = entry.strip()
            m = re.match(r'(global|local)\s*:\s*(.*)', entry, flags=re.S)
            if m:
                scope, entry = m.group(1), m.group(2).strip()
            if entry and scope == 'global':
                names.add(entry)
    return nodes, names


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    nm, lib, include_dir, map_path = sys.argv[1:]
    nodes, listed = map_entries(map_path)
    exported = exported_symbols(nm, lib, nodes)
    declared = public_declarations(include_dir)

    problems = []
    for name in sorted(exported - declared.keys()):
        problems.append(f'{name}: exported, but no public header declares it '
                        '(an internal: it must be neither GW_API nor in lib/libgodwit.map)')
    for name in sorted(declared.keys() - exported):
        problems.append(f'{name}: declared in include/godwit/{declared[name]} but not '
                        'exported (mark the declaration GW_API and list it in '
                        'lib/libgodwit.map, or define it)')
    for name in sorted(listed - exported - (declared.keys() - exported)):
        problems.append(f'{name}: listed in lib/libgodwit.map but not exported '
                        '(renamed or removed? update the map)')
    for p in problems:
        print(f'check_exports: {p}', file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f'{lib}: {len(exported)} symbols exported, '
          f'each declared in include/godwit/ and listed in the map')


if __name__ == '__main__':
    main()

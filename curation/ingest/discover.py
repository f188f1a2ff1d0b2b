"""Find the input files of an ingest: folders, single files and glob patterns -> :class:`Entry` rows.

Every path the walk meets becomes one entry: a file to read, or a *problem* that the stage turns into
a quarantine row (a symbolic link that leaves the input folders, a link loop, a broken link, a file
name that is not UTF-8, a folder that cannot be listed, a named pipe or device). Nothing the walk
sees is skipped without a row, and nothing it does can hang (no pipe is opened, no loop is entered).

Source URIs are ``<label>/<relative path>``, where ``label`` is the input folder's name (a file's
parent folder for a file, the non-glob prefix for a pattern). Two different input folders with the
same name (``a/docs``, ``b/docs``) get longer labels (``a/docs``, ``b/docs``) so their URIs differ;
one input folder keeps its plain name, so ids of existing corpora do not change. Two different
files that would still get one URI are a :class:`ConfigError`, never a silent drop.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ConfigError

_GLOB_CHARS = re.compile(r"[*?\[]")
_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


@dataclass(frozen=True)
class Entry:
    """One input path: ``problem`` is None for a regular file to read, else the quarantine reason."""

    path: str
    uri: str
    problem: str | None = None
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class _Spec:
    root: str  # real path of the folder the URIs are relative to
    pattern: list[str] | None  # glob pattern components below root; None: the whole folder
    single: str | None = None  # a file named directly


def _parse(spec: str) -> _Spec:
    if _GLOB_CHARS.search(spec):
        head = _GLOB_CHARS.split(spec, 1)[0]
        prefix = head if head.endswith("/") else os.path.dirname(head)
        root = os.path.realpath(prefix or ".")
        rest = spec[len(prefix):].lstrip("/")
        return _Spec(root=root, pattern=[p for p in rest.split("/") if p])
    if not os.path.lexists(spec):
        raise ConfigError(
            f"ingest: input path does not exist: {spec}",
            received=spec, expected="an existing folder, file or glob pattern",
            fix="fix the path in 'paths:' (relative paths start at the working directory)",
        )
    if os.path.isdir(spec):
        return _Spec(root=os.path.realpath(spec), pattern=None)
    parent = os.path.dirname(os.path.abspath(spec))
    return _Spec(root=os.path.realpath(parent), pattern=None, single=os.path.join(os.path.realpath(parent),
                                                                              os.path.basename(spec)))


def input_roots(paths: list[str]) -> list[Path]:
    """The real folders an ingest of ``paths`` reads (for checks such as "workspace inside an input");
    a file named directly reads no folder."""
    return sorted({Path(s.root) for s in map(_parse, paths) if s.single is None})


def allowed_paths(paths: list[str]) -> list[str]:
    """Real paths a link may point into without follow_symlinks: the input folders and the files named directly."""
    specs = [_parse(p) for p in paths]
    return sorted({s.root for s in specs if s.single is None} | {s.single for s in specs if s.single})


def _labels(roots: list[str]) -> dict[str, str]:
    """Shortest path suffix that tells each distinct root apart (its plain name when that is unique)."""
    parts = {r: [p for p in r.split(os.sep) if p] or ["root"] for r in roots}
    out = {}
    for r, ps in parts.items():
        k = 1
        while k < len(ps) and any(o != r and parts[o][-k:] == ps[-k:] for o in parts):
            k += 1
        out[r] = "/".join(ps[-k:])
    return out


def inside(target: str, allowed: list[str]) -> bool:
    return any(target == a or target.startswith(a.rstrip(os.sep) + os.sep) for a in allowed)


def _printable(rel: str) -> tuple[str, bool]:
    """(URI-safe text, whether it was valid UTF-8): undecodable bytes are shown as \\xNN."""
    try:
        rel.encode("utf-8")
        return rel, True
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace"), False


def _match(pattern: list[str], parts: list[str]) -> bool:
    """Glob match of path components: '*', '?', '[..]' within one component, '**' across components;
    wildcards do not match a leading '.' (as glob.glob)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def _walk(spec: _Spec, label: str, *, allowed: list[str], follow: bool) -> Iterator[tuple[str, str, str | None]]:
    """(path as found, uri, problem) for everything below spec.root that the spec selects; no recursion."""
    deep = spec.pattern is None or "**" in spec.pattern
    max_depth = None if deep else len(spec.pattern)

    def selected(rel: str, *, is_dir_problem: bool = False) -> bool:
        if spec.pattern is None:
            return True
        return _match(spec.pattern, rel.split("/")) or (is_dir_problem and deep)

    def uri(rel: str) -> str:
        return f"{label}/{_printable(rel)[0]}"

    root_st = os.stat(spec.root)
    stack: list[tuple[str, str, frozenset]] = [(spec.root, "", frozenset({(root_st.st_dev, root_st.st_ino)}))]
    while stack:
        folder, rel_dir, ancestors = stack.pop()
        try:
            names = sorted(e.name for e in os.scandir(folder))
        except OSError as exc:
            if not rel_dir:
                raise ConfigError(f"ingest: cannot list the input folder {folder}",
                                  received=f"{type(exc).__name__}: {exc.strerror or exc}",
                                  fix="check the folder's permissions or fix 'paths:'") from None
            if selected(rel_dir, is_dir_problem=True):
                yield folder, uri(rel_dir), f"unreadable folder: {type(exc).__name__}: {exc.strerror or exc}"
            continue
        subdirs = []
        for name in names:
            path = os.path.join(folder, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            depth = rel.count("/") + 1
            try:
                lst = os.lstat(path)
            except OSError as exc:
                yield path, uri(rel), f"unreadable: {type(exc).__name__}: {exc.strerror or exc}"
                continue
            problem = None
            st = lst
            dir_like = False  # a problem link that may stand for a folder (its files were not listed)
            if stat.S_ISLNK(lst.st_mode):
                target = os.path.realpath(path)
                try:
                    st = os.stat(path)
                    dir_like = stat.S_ISDIR(st.st_mode)
                except OSError as exc:
                    dir_like = True
                    problem = ("symlink loop: the link resolves to itself" if exc.errno == errno.ELOOP else
                               f"broken symlink: its target {target} does not exist")
                if problem is None and not follow and not inside(target, allowed):
                    problem = (f"symlink leaves the input folders: {rel} -> {target}; not read "
                               "(set follow_symlinks: true in the ingest config to read it)")
            is_dir = problem is None and stat.S_ISDIR(st.st_mode)
            if problem is None and is_dir:
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    dir_like = True
                    problem = f"symlink loop: folder {rel} is a link to one of its own parent folders"
                elif max_depth is None or depth < max_depth:
                    subdirs.append((path, rel, ancestors | {key}))
                    continue
                else:
                    continue
            if problem is None and not _printable(rel)[1]:
                problem = ("file name is not valid UTF-8: " + repr(os.fsencode(rel))
                           + "; rename it to UTF-8 (e.g. `convmv -f latin1 -t utf8`)")
            if problem is None and not stat.S_ISREG(st.st_mode):
                problem = f"not a regular file: {rel} is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}"
            if max_depth is not None and depth > max_depth:
                continue
            if selected(rel, is_dir_problem=dir_like):
                yield path, uri(rel), problem
        stack.extend(reversed(subdirs))


def discover(paths: list[str], *, follow_symlinks: bool = False) -> list[Entry]:
    """Every input entry of ``paths``, sorted by URI (stable across machines and runs).

    A file found through several specs (a folder and a file inside it) is read once, under the URI of
    the first spec that reaches it.
    """
    specs = [_parse(p) for p in paths]
    labels = _labels(sorted({s.root for s in specs}))
    allowed = allowed_paths(paths)
    found: dict[str, Entry] = {}
    by_uri: dict[str, str] = {}
    for spec in specs:
        if spec.single is not None:
            name = os.path.basename(spec.single)
            text, ok = _printable(name)
            problem = None if ok else f"file name is not valid UTF-8: {os.fsencode(name)!r}; rename it to UTF-8"
            items = [(spec.single, f"{labels[spec.root]}/{text}", problem)]
        else:
            items = _walk(spec, labels[spec.root], allowed=allowed, follow=follow_symlinks)
        for path, uri, problem in items:
            key = path  # the real input root joined with the path as found below it
            if key in found:
                continue
            if uri in by_uri and by_uri[uri] != key:
                raise ConfigError(
                    f"ingest: two different input files get the same source id {uri!r}",
                    received=f"{by_uri[uri]} and {key}",
                    fix="give the input folders different names or list one parent folder instead of both",
                )
            by_uri[uri] = key
            size, mtime = -1, -1
            if problem is None:
                try:
                    st = os.stat(path)
                    size, mtime = st.st_size, st.st_mtime_ns
                    if not stat.S_ISREG(st.st_mode):
                        problem = f"not a regular file: {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}"
                except OSError as exc:
                    problem = f"unreadable: {type(exc).__name__}: {exc.strerror or exc}"
            found[key] = Entry(path=path, uri=uri, problem=problem, size=size, mtime_ns=mtime)
    return sorted(found.values(), key=lambda e: e.uri)


def plan_shards(entries: list[Entry], *, shard_bytes: int) -> list[list[Entry]]:
    """Group entries into shards of about ``shard_bytes`` input bytes (a file is never split)."""
    shards: list[list[Entry]] = []
    cur: list[Entry] = []
    size = 0
    for e in entries:
        n = max(e.size, 0)
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(e)
        size += n
    if cur:
        shards.append(cur)
    return shards


def manifest(entries: list[Entry]) -> list[list]:
    """What decides whether an earlier ingest is still current: URI, size, mtime and problem per entry."""
    return [[e.uri, e.size, e.mtime_ns] + ([e.problem] if e.problem else []) for e in entries]

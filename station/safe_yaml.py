"""Reading a YAML config without letting the file hurt the process: type, size, aliases, nesting.

A station YAML is a few kilobytes of plain mappings. Anything else is refused before it can hang or
exhaust the station: a path that is not a regular file (a FIFO would block the read forever, a device
could be opened with side effects) is refused from its `stat()` before it is opened; a file larger
than `MAX_FILE_BYTES` is refused from its size; and the YAML event stream is walked once, without
recursion, before anything is built from it, counting nesting depth, aliases, aliases to a node that
contains them (a recursive alias) and the number of nodes the aliases expand to ("billion laughs").
Only then is the document composed and constructed, which is safe once those are bounded. Every
refusal is a `YamlRefused` naming the line and the key path where it was found.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024   # a full station YAML with every comment is about 10 kB
MAX_DEPTH = 24                 # the station schema nests 5 levels deep
MAX_ALIASES = 100              # anchors are handy for repeated actuator settings; a hundred is plenty
MAX_NODES = 50_000             # nodes after expanding every alias; the full schema has a few hundred


class YamlRefused(ValueError):
    """The file or its YAML is refused before it is built; `line` is 1-based (None: the file itself)."""

    def __init__(self, message: str, *, line: int | None = None, key: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _kind_of(mode: int) -> str:
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; YamlRefused (no line) for anything else.
    OSError (missing, unreadable) is left to the caller, which names the file."""
    st = os.stat(path)  # follows symlinks: a link to a regular file is fine
    if not stat.S_ISREG(st.st_mode):
        raise YamlRefused(f"{path} is {_kind_of(st.st_mode)}, not a regular file: give the path of a YAML file")
    # O_NONBLOCK: should the path be swapped for a FIFO after the stat, open() still returns at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise YamlRefused(f"{path} is {_kind_of(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise YamlRefused(f"{path} is {st.st_size} bytes; a station YAML is limited to {max_bytes} bytes")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while being read
            raise YamlRefused(f"{path} is over {max_bytes} bytes; a station YAML is limited to {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass
class _Open:
    """A mapping or sequence whose end has not been seen yet."""

    is_map: bool
    anchor: str | None
    nodes: int = 1                 # nodes inside it so far, aliases expanded
    key: str | None = None         # mapping: the key whose value is being read
    expect_key: bool = True
    index: int = 0
    path: list[str] = field(default_factory=list)


def check_limits(text: str, *, max_depth: int = MAX_DEPTH, max_aliases: int = MAX_ALIASES,
                 max_nodes: int = MAX_NODES) -> None:
    """Walk the YAML events once and raise YamlRefused at the first limit passed. Syntax errors
    (yaml.YAMLError) pass through for the caller to report."""
    open_nodes: list[_Open] = []
    anchor_nodes: dict[str, int] = {}   # anchor -> nodes it expands to (known once it is closed)
    aliases = 0

    def where() -> str:
        parts: list[str] = []
        for frame in open_nodes:
            if frame.is_map and frame.key is not None and not frame.expect_key:
                parts.append(frame.key)
            elif not frame.is_map:
                parts.append(str(frame.index))
        return ".".join(parts[:8]) + (f"... ({len(parts)} levels)" if len(parts) > 8 else "")

    def child_done(nodes: int, scalar: str | None, line: int) -> None:
        if not open_nodes:
            return
        parent = open_nodes[-1]
        parent.nodes += nodes
        if parent.nodes > max_nodes:
            raise YamlRefused(f"the document expands to more than {max_nodes} nodes (aliases that repeat "
                              f"aliases: a 'billion laughs' file?)", line=line, key=where())
        if parent.is_map:
            if parent.expect_key:
                parent.key, parent.expect_key = (scalar if scalar is not None else "?"), False
            else:
                parent.expect_key = True
        else:
            parent.index += 1

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(open_nodes) >= max_depth:
                raise YamlRefused(f"nesting deeper than {max_depth} levels", line=line, key=where())
            open_nodes.append(_Open(is_map=isinstance(event, yaml.MappingStartEvent), anchor=event.anchor))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            closed = open_nodes.pop()
            if closed.anchor is not None:
                anchor_nodes[closed.anchor] = closed.nodes
            child_done(closed.nodes, None, line)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchor_nodes[event.anchor] = 1
            child_done(1, event.value, line)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > max_aliases:
                raise YamlRefused(f"more than {max_aliases} aliases (*name)", line=line, key=where())
            if any(frame.anchor == event.anchor for frame in open_nodes):
                raise YamlRefused(f"recursive alias: *{event.anchor} refers to a node that contains it",
                                  line=line, key=where())
            child_done(anchor_nodes.get(event.anchor, 1), None, line)


def load_document(text: str) -> tuple[yaml.Node | None, Any]:
    """Check the limits, then compose and construct the single document: (root node, Python data)."""
    check_limits(text)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data

"""Read pickles that hold plain data only (the RefCOCO ``refs(<split_by>).p`` files).

A pickle is a program: opcodes such as GLOBAL + REDUCE import and call any function
(``os.system`` included) while it loads. The refer toolkit ships its refs as pickles, so we read
them with two independent guards and refuse anything but plain data:

1. ``scan_opcodes`` walks the opcode stream (with ``pickletools``, which only parses) and refuses
   any opcode outside an allow-list of plain-data opcodes: no imports (GLOBAL, STACK_GLOBAL,
   INST, OBJ, EXT*), no calls (REDUCE, NEWOBJ*, BUILD), no persistent ids, no sets, frozensets,
   bytearrays or out-of-band buffers. Nothing runs before the whole stream has passed.
2. ``RestrictedUnpickler.find_class`` refuses every global, builtins included, so even an opcode
   stream that slipped past the scan could not reach a callable; ``persistent_load`` refuses too.

The result is then checked to hold only dict/list/tuple/str/int/float/bool/None/bytes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

# Opcodes that build plain values, containers and memo references; all others are refused.
SAFE_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING",  # Python 2 str
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
    "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET", "MEMOIZE",
})
_STRING_OPCODES = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8",
})
SAFE_TYPES = (dict, list, tuple, str, int, float, bool, type(None), bytes)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle holds something other than plain data (a global, a call, a set, ...)."""


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def scan_opcodes(data: bytes, source: str | None = None) -> None:
    """Raise ``UnsafePickleError`` at the first opcode outside ``SAFE_OPCODES``.

    Only parses; executes nothing. ``source`` (a file name) goes into the error message.
    """
    recent: list[str] = []  # the last string literals: the module and name of a STACK_GLOBAL
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in SAFE_OPCODES:
                if op.name in _STRING_OPCODES:
                    recent = (recent + [str(arg)])[-2:]
                continue
            _refuse(op.name, arg, pos, recent, source)
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or corrupt stream: pickletools raises ValueError & co.
        raise UnsafePickleError(f"not a readable pickle{_where(source)}: {e}") from e


def _refuse(name: str, arg: Any, pos: int | None, recent: list[str],
            source: str | None) -> NoReturn:
    what = ""
    if name in ("GLOBAL", "INST") and arg:
        what = f" ({str(arg).replace(' ', '.')})"
    elif name == "STACK_GLOBAL" and len(recent) == 2:
        what = f" (probably {recent[0]}.{recent[1]})"
    raise UnsafePickleError(
        f"refusing to load the pickle{_where(source)}: opcode {name}{what} at byte {pos} "
        "could import, call or build a non-plain object; only dict/list/tuple/str/int/float/"
        "bool/None/bytes are allowed"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, even harmless builtins such as ``builtins.set``.

    With no globals there is no callable to REDUCE, no class to instantiate, and no extension
    code to look up, so only plain data can come out.
    """

    def __init__(self, file: BinaryIO, *, source: str | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> NoReturn:
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}{_where(self._source)}: this unpickler "
            "accepts plain data only (dict/list/tuple/str/int/float/bool/None/bytes)"
        )

    def persistent_load(self, pid: Any) -> NoReturn:
        raise UnsafePickleError(f"refusing a persistent id{_where(self._source)}: plain data only")


#: limits on the data a pickle may expand to, checked before anything walks it recursively:
#: memo references let 235 bytes stand for 10^10 values ("billion laughs"), and a 200k-deep
#: nesting overflows Python's stack. RefCOCO's largest refs file is ~2 M values, 4 levels deep.
MAX_VALUES = 20_000_000
MAX_DEPTH = 100


def check_plain(obj: Any, source: str | None = None) -> None:
    """Raise ``UnsafePickleError`` if ``obj`` holds anything but ``SAFE_TYPES``, refers to
    itself, nests deeper than `MAX_DEPTH`, or expands, shared references counted each time they
    occur, to more than `MAX_VALUES` values. Iterative, and each shared container is walked once:
    the expanded size and depth are computed, never expanded."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded values, levels) of a container
    ancestors: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        x, finished = stack.pop()
        if type(x) not in SAFE_TYPES:  # exact types: a subclass could carry behaviour
            raise UnsafePickleError(
                f"unexpected {type(x).__name__} object{_where(source)}: plain data only")
        if not isinstance(x, (dict, list, tuple)) or (not finished and id(x) in sizes):
            continue
        children = [*x.keys(), *x.values()] if isinstance(x, dict) else list(x)
        if finished:
            inner = [sizes.get(id(c), (1, 0)) for c in children]
            size = 1 + sum(n for n, _ in inner)
            depth = 1 + max((d for _, d in inner), default=0)
            if size > MAX_VALUES:
                raise UnsafePickleError(f"the data{_where(source)} expand to more than "
                                        f"{MAX_VALUES:,} values (shared references counted each "
                                        "time): refused before expanding them")
            if depth > MAX_DEPTH:
                raise UnsafePickleError(f"the data{_where(source)} nest deeper than "
                                        f"{MAX_DEPTH} levels")
            sizes[id(x)] = (size, depth)
            ancestors.discard(id(x))
            continue
        if id(x) in ancestors:  # popped while its own walk is pending: it contains itself
            raise UnsafePickleError(f"the data{_where(source)} refer to themselves")
        if len(ancestors) > MAX_DEPTH:
            raise UnsafePickleError(f"the data{_where(source)} nest deeper than {MAX_DEPTH} levels")
        ancestors.add(id(x))
        stack.append((x, True))
        stack.extend((c, False) for c in children)


def loads(data: bytes, source: str | None = None, encoding: str = "bytes") -> Any:
    """Plain data from pickle bytes: scan the opcodes, unpickle with no globals, check the types.

    ``encoding`` is for Python 2 ``str`` objects (the original refs files were written by
    Python 2). The default ``"bytes"`` keeps them as ``bytes`` so that no guess about their text
    encoding is made here; ``to_text`` decodes them.
    """
    scan_opcodes(data, source)
    obj = RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    check_plain(obj, source)
    return obj


def load(path: str | Path, encoding: str = "bytes") -> Any:
    """``loads`` on a file's contents; the error messages name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    return loads(path.read_bytes(), source=str(path), encoding=encoding)


def to_text(obj: Any) -> Any:
    """JSON-ready copy: bytes → str (UTF-8, else Latin-1), tuples → lists, keys → str."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:  # Python 2 str holding Latin-1 text
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {str(to_text(k)): to_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_text(v) for v in obj]
    return obj

"""Bounded readers of a checkpoint's raw bytes, run before anything is built from them.

A checkpoint is a file people download, so it is untrusted input. Two of its parts are read here with bounds,
before ``torch.load`` or a YAML loader can spend unbounded time or memory on them:

- the pickle stream, read opcode by opcode without building anything (:func:`check_pickle_stream`): a
  dictionary key made of tuples that share themselves would make unpickling hash forever (a 1 kB file);
  ``weights_only`` stops code from running, not this;
- the stored training config, YAML of at most :data:`MAX_CONFIG_BYTES`, without anchors or aliases, read by a
  safe loader (:func:`parse_stored_config`).

What the loaded content may hold is checked next, by :func:`cxrnet.checkpoint_validation.validate_checkpoint`.
"""

from __future__ import annotations

import pickletools
import re
from pathlib import Path
from typing import Any

import yaml

CHECKPOINT_KEY = "cxrnet"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable cxrnet checkpoint; the message names the file and the reason."""


MAX_CONFIG_BYTES = 1 << 20
"""Largest stored training config (YAML text); cxrnet writes a few kB."""


MAX_METADATA_DEPTH = 32
"""Deepest nesting of containers in the metadata (and in the stored YAML config); cxrnet writes 5."""

#: How to get a usable file, appended to every refusal of a checkpoint's content.
UNTRUSTED_HINT = (
    "the file was not written by cxrnet or was altered since: use a checkpoint written by python -m "
    "cxrnet.train or python -m cxrnet.calibrate, from a source you trust"
)


def error_summary(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def refusal(path: Path, field: str, problem: str, fix: str = UNTRUSTED_HINT) -> CheckpointError:
    return CheckpointError(f"refusing checkpoint {path}: {field} {problem}; {fix}")


def reworded_refusal(
    err: CheckpointError, path: Path, subject: str, hint: str, weights_subject: str | None = None
) -> CheckpointError:
    """A :func:`refusal` of checkpoint content reworded for a file that stores the same metadata differently.

    ``refusing checkpoint <path>: cxrnet.<field> <problem>; <fix>`` becomes
    ``refusing <subject><field> <problem>; <hint>`` (fields without the ``cxrnet.`` prefix), and a refusal
    of ``state_dict['net.<name>']`` becomes ``refusing <weights_subject>tensor '<name>' ...`` when
    ``weights_subject`` is given. Other messages keep their wording, with ``hint`` for the untrusted-file
    hint.
    """
    text = str(err).replace(UNTRUSTED_HINT, "\0")
    prefix = f"refusing checkpoint {path}: "
    if text.startswith(prefix):
        rest = text[len(prefix) :]
        if weights_subject is not None and rest.startswith("state_dict["):
            text = (
                "refusing " + weights_subject + re.sub(r"state_dict\['net\.([^']*)'\]", r"tensor '\1'", rest)
            )
        else:
            text = "refusing " + subject + rest.replace(f"{CHECKPOINT_KEY}.", "")
    return CheckpointError(text.replace("\0", hint))


MAX_KEY_VALUES = 10_000
"""Most values a dictionary key in the checkpoint's pickle may hold (cxrnet and Lightning write string and
integer keys: 1 value each)."""

_PUSH_ONE = frozenset(
    [
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "EMPTY_LIST",
        "EMPTY_DICT",
        "EMPTY_SET",
        "GLOBAL",
        "PERSID",
        "EXT1",
        "EXT2",
        "EXT4",
        "NEXT_BUFFER",
    ]
)
_REPLACE = {"STACK_GLOBAL": 2, "BINPERSID": 1, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3, "READONLY_BUFFER": 1}
_POP = {"APPEND": 1, "BUILD": 1, "POP": 1}


def check_pickle_stream(data: bytes, path: str | Path = "checkpoint") -> None:
    """Refuse a pickle whose dictionary keys are tuples that share themselves into an exponential hash.

    Unpickling hashes every dictionary key, and hashing a tuple hashes all it contains, again for each
    reference: 60 tuples of two references to the previous one make a 1 kB file whose loading, inside
    ``torch.load``, never ends (``weights_only`` allows tuples). The opcodes are read without building
    anything, each stack entry weighed by the values a hash of it visits; a key heavier than
    :data:`MAX_KEY_VALUES` is refused. A stream this reading cannot follow is left to ``torch.load``.

    Args:
        data: the pickle stream (``data.pkl`` of a torch zip archive).
        path: the checkpoint, for messages.

    Raises:
        CheckpointError: a dictionary key (or frozenset element) would visit more than
            :data:`MAX_KEY_VALUES` values when hashed.
    """
    stack: list[int] = []
    marks: list[int] = []  # stack heights at each open MARK, as the unpickler keeps them
    memo: dict[int, int] = {}

    def to_mark() -> list[int]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def check_keys(keys: list[int]) -> None:
        heaviest = max(keys, default=0)
        if heaviest > MAX_KEY_VALUES:
            raise refusal(
                Path(path),
                "the pickle stream",
                f"has a dictionary key of over {MAX_KEY_VALUES} values ({heaviest}, shared tuples that a "
                "hash visits again for every reference): loading it would never end",
            )

    try:
        for opcode, argument, _ in pickletools.genops(data):
            name = opcode.name
            if name in _PUSH_ONE:
                stack.append(1)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_TUPLE":
                stack.append(1)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = stack[-size:]
                del stack[-size:]
                stack.append(min(1 + sum(items), 2**62))
            elif name == "TUPLE":
                stack.append(min(1 + sum(to_mark()), 2**62))
            elif name in ("LIST", "DICT", "OBJ", "INST"):
                items = to_mark()
                if name == "DICT":
                    check_keys(items[0::2])
                stack.append(1)
            elif name in ("APPENDS", "POP_MARK", "ADDITEMS"):
                items = to_mark()
                if name == "ADDITEMS":
                    check_keys(items)
            elif name == "SETITEM":
                check_keys([stack[-2]])
                del stack[-2:]
            elif name == "SETITEMS":
                check_keys(to_mark()[0::2])
            elif name == "FROZENSET":
                check_keys(to_mark())
                stack.append(1)
            elif name in _REPLACE:
                del stack[-_REPLACE[name] :]
                stack.append(1)
            elif name in _POP:
                del stack[-_POP[name] :]
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(argument)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(argument)])
            elif name == "STOP":
                return
            elif name not in ("PROTO", "FRAME"):
                return  # an opcode not followed here: torch.load decides
    except CheckpointError:
        raise
    except Exception:  # a malformed stream (underflow, unknown memo, bad opcode): torch.load refuses it
        return


def parse_stored_config(text: str, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Parse the training config a checkpoint stores as YAML text, safely and with bounds.

    cxrnet writes it with ``OmegaConf.to_yaml``: plain YAML of a few kB, without anchors or aliases. A YAML
    alias repeats a node without copying it, so a 560-byte text can expand to billions of nodes once
    converted (a "billion laughs"); aliases, anchors, tags beyond YAML's safe ones, nesting deeper than
    :data:`MAX_METADATA_DEPTH` and texts above :data:`MAX_CONFIG_BYTES` are refused before anything is built.
    Interpolations (``${...}``) are kept as text, never resolved.

    Args:
        text: the stored YAML.
        path: the checkpoint, for messages.

    Returns:
        The config as plain dicts and lists (``{}`` for an empty text).

    Raises:
        CheckpointError: the text is too large, not valid YAML, uses aliases or anchors, is nested too deeply,
            or is not a mapping.
    """
    path, field = Path(path), f"{CHECKPOINT_KEY}.config"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise refusal(path, field, f"is {size} bytes of YAML; at most {MAX_CONFIG_BYTES} are read")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    try:
        # Events are checked before any node is composed: an alias is refused before it can expand.
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise refusal(
                    path,
                    field,
                    "uses YAML anchors or aliases (&name / *name), which cxrnet never writes and which can "
                    "expand a few hundred bytes into billions of nodes ('billion laughs')",
                )
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_METADATA_DEPTH:
                    raise refusal(path, field, f"is nested more than {MAX_METADATA_DEPTH} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        config = yaml.load(text, Loader=loader)
    except CheckpointError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:  # ValueError: a 5000-digit integer
        raise refusal(path, field, f"is not valid YAML ({error_summary(err)})") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise refusal(path, field, f"is YAML of a {type(config).__name__}; expected a mapping of options")
    return config

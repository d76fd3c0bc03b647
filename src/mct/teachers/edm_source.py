"""Does an EDM snapshot's embedded network source match a known EDM release?

An EDM pickle carries the Python source of its network module (``module_src``), which EDM
itself would ``exec``; MCT never runs it, it rebuilds the network from its own code. Class names
and init kwargs can match while the formulas in the source do not, so the source is compared,
definition by definition, with the released ``training/networks.py`` of NVlabs/edm.

Comparison is on a normalised form, so a checkout's line endings, comments, blank lines and
docstrings do not matter: the source is parsed with :func:`ast.parse` (parsing runs nothing) and
each top-level definition is serialised canonically (node types and fields, no positions, empty
fields dropped so the form is the same across Python versions) and hashed (sha256, 16 hex digits).
"""

from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_SOURCE_CHARS = 2_000_000  # EDM's networks.py is ~35 kB

# The definitions MCT reimplements (mct.nets.dhariwal): a difference in one of these changes what
# the loaded network computes. The other classes of networks.py (SongUNet, VPPrecond, ...) are
# reported too, but only as "other definitions differ".
USED_BY_MCT = ("weight_init", "Linear", "Conv2d", "GroupNorm", "AttentionOp", "UNetBlock", "PositionalEmbedding",
               "DhariwalUNet", "EDMPrecond")

# normalised digests of training/networks.py at NVlabs/edm b2a26c9 ("Fix to #2", the code of the
# public repository since Nov 2022), computed with :func:`definition_digests`
_EDM_B2A26C9 = {
    "weight_init": "bbad2d29b2fb0fb0", "Linear": "a572cca2589b2174", "Conv2d": "9a8dcfb8c70aa43e",
    "GroupNorm": "410775acde1f16e1", "AttentionOp": "576472b5da48a057", "UNetBlock": "4f88bbb9cfcc70cd",
    "PositionalEmbedding": "28081cb7bd1ad378", "FourierEmbedding": "a99c447d2b8f227e",
    "SongUNet": "301b8cd874e2f53c", "DhariwalUNet": "b79728411dd6769e", "VPPrecond": "ac425c4d03652bb6",
    "VEPrecond": "af1968e1d86da7f1", "iDDPMPrecond": "39e5e36cf560963a", "EDMPrecond": "a7233af0860f5d63",
    "<module>": "1dad5d36e7e2f81a",
}
# NVlabs/edm 0a2ff34 (initial release) differs in Conv2d only (the padding of fused up-sampling,
# which DhariwalUNet does not use)
_EDM_0A2FF34_CHANGES = {"Conv2d": "aeca1c42b234caae"}

KNOWN_EDM_SOURCES: dict[str, dict[str, str]] = {
    "NVlabs/edm b2a26c9 training/networks.py": _EDM_B2A26C9,
    "NVlabs/edm 0a2ff34 (initial release) training/networks.py": {**_EDM_B2A26C9, **_EDM_0A2FF34_CHANGES},
}


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):  # iterative
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def canonical(node: ast.AST) -> str:
    """A canonical text of an AST (no positions; None and empty-list fields omitted), built without
    recursion so a deeply nested source cannot exhaust the stack."""
    out: list[str] = []
    stack: list = [node]
    while stack:
        x = stack.pop()
        if isinstance(x, _Text):
            out.append(x.text)
        elif isinstance(x, ast.AST):
            out.append(type(x).__name__ + "(")
            stack.append(_Text(")"))
            items = [(f, getattr(x, f, None)) for f in x._fields]
            for name, value in reversed([(f, v) for f, v in items if v is not None and v != []]):
                stack.append(_Text(";"))
                stack.append(value)
                stack.append(_Text(name + "="))
        elif isinstance(x, list):
            out.append("[")
            stack.append(_Text("]"))
            for item in reversed(x):
                stack.append(_Text(","))
                stack.append(item)
        else:
            out.append(repr(x))
    return "".join(out)


class _Text:
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def definition_digests(src: str) -> dict[str, str]:
    """{top-level def/class name: digest, '<module>': digest of every other top-level statement}.
    ValueError when the source is too large or does not parse."""
    if not isinstance(src, str):
        raise ValueError("the source is not text")
    if len(src) > MAX_SOURCE_CHARS:
        raise ValueError(f"the source is larger than {MAX_SOURCE_CHARS:,} characters")
    try:
        tree = ast.parse(src.replace("\r\n", "\n"))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"the source is not parseable Python ({type(exc).__name__})") from None
    _strip_docstrings(tree)
    digests: dict[str, str] = {}
    rest: list[str] = []
    for stmt in tree.body:
        text = canonical(stmt)
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            digests[stmt.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
        else:
            rest.append(text)
    digests["<module>"] = hashlib.sha256("\n".join(rest).encode()).hexdigest()[:16]
    return digests


def source_digest(digests: dict[str, str]) -> str:
    """One digest for the whole normalised source."""
    blob = "".join(f"{k}:{v}\n" for k, v in sorted(digests.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SourceMatch:
    """How an embedded source compares with the closest known EDM release."""

    digest: str | None                     # normalised digest (None: not parseable)
    release: str | None                    # the known release it equals, else None
    closest: str | None = None
    differ: list[str] = field(default_factory=list)    # definitions used by MCT that differ
    missing: list[str] = field(default_factory=list)   # definitions used by MCT that are absent
    other: list[str] = field(default_factory=list)     # other definitions that differ / are added / absent
    error: str | None = None

    @property
    def matches(self) -> bool:
        return self.release is not None

    def describe(self) -> str:
        if self.error:
            return f"not compared: {self.error}"
        if self.matches:
            return f"matches {self.release} (normalised sha256 {self.digest})"
        parts = []
        if self.differ:
            parts.append(f"{', '.join(self.differ)} differ")
        if self.missing:
            parts.append(f"{', '.join(self.missing)} absent")
        if self.other:
            more = ", ..." if len(self.other) > 6 else ""
            parts.append(f"other definitions differ ({', '.join(self.other[:6])}{more})")
        return (f"does NOT match a known EDM release (normalised sha256 {self.digest}; closest: {self.closest}): "
                + "; ".join(parts or ["module-level code differs"]))


def compare_source(src) -> SourceMatch:
    """Compare an embedded ``module_src`` with :data:`KNOWN_EDM_SOURCES`."""
    try:
        found = definition_digests(src)
    except ValueError as exc:
        return SourceMatch(digest=None, release=None, error=str(exc))
    digest = source_digest(found)
    best = None
    for name, known in KNOWN_EDM_SOURCES.items():
        if found == known:
            return SourceMatch(digest=digest, release=name)
        score = sum(found.get(k) == v for k, v in known.items())
        if best is None or score > best[0]:
            best = (score, name, known)
    _, name, known = best
    differ = [k for k in USED_BY_MCT if k in found and k in known and found[k] != known[k]]
    missing = [k for k in USED_BY_MCT if k not in found]
    other = sorted(k for k in set(found) | set(known) if k not in USED_BY_MCT and found.get(k) != known.get(k))
    return SourceMatch(digest=digest, release=None, closest=name, differ=differ, missing=missing, other=other)


def warn_unless_known(src, path) -> SourceMatch:
    """Compare, and log a warning saying what differs when the source is not a known release: MCT's
    network computes what the release computes, not what this source says."""
    match = compare_source(src)
    if not match.matches:
        log.warning("checkpoint %s: the embedded network source %s; MCT builds the released EDM formulas "
                    "regardless, so this network may not compute what it was trained as", path, match.describe())
    return match

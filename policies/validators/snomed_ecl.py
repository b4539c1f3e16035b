"""Syntax of the SNOMED CT Expression Constraint Language (ECL), read from its official ABNF.

A ValueSet may select SNOMED CT concepts with an ECL expression (``compose.include.filter`` with
``property = constraint``, ``op = =``); the reference validator rejects one that does not parse
("Invalid ECL: ... - parse error"). This module decides whether a text is ECL, and must never
call valid ECL invalid: a check that rejects good value sets is worse than none.

So it does not re-implement the grammar by hand. It interprets the normative ABNF published by
SNOMED International (``IHTSDO/snomed-expression-constraint-language``, Apache-2.0, vendored
verbatim in ``policies/fhir/snomed-ecl-*.abnf.txt``, see ``policies/fhir/README.md``):

* the **long syntax** of ECL 2.2 (the released version), which is a superset of the brief
  syntax rule by rule (``<<`` or ``descendantOrSelfOf``, ``^`` or ``memberOf``, ``R`` or
  ``reverseOf``, ...), with refinements, cardinality, dotted attributes, concrete values,
  description / concept / member filters, history supplements, top and bottom, alternate
  identifiers; and
* the draft that follows it (the repository's ``develop`` branch: ``active = *``, concrete
  string sets), so that a value set written to the next version is not refused either.

A text is ECL when either grammar derives it. The interpreter is exact for the ABNF's language
(RFC 5234, with RFC 7405's ``%s``/``%i``): for each rule and position it computes *every* end
position (memoised), so no ordered-choice or greedy-loop shortcut can lose a parse, and the
grammar's ambiguity (which its README warns of) does not matter to a recognizer. Quoted strings
are case-insensitive, as RFC 5234 says and as SNOMED's own ANTLR grammar reads them. The text is
matched as its UTF-8 bytes, because that is how the ABNF defines non-ASCII characters.

What it cannot judge it accepts: a text longer than :data:`MAX_BYTES`, or nested too deeply for
the interpreter's recursion (:class:`RecursionError`) -- :func:`ecl_syntax_error` then returns
``None``. Only the syntax is checked; whether the concepts exist needs a SNOMED CT release.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "fhir"
#: The vendored grammars, tried in order: the released ECL 2.2, then the next draft.
GRAMMARS = ("snomed-ecl-2.2-long.abnf.txt", "snomed-ecl-draft-long.abnf.txt")
START = "expressionConstraint"
#: Longer texts are not judged (the interpreter is polynomial, not linear; real ECL is short).
MAX_BYTES = 8_192

Ends = frozenset[int]
#: A compiled ABNF element: (the text, the start position, the memo) -> every end position.
Matcher = Callable[[bytes, int, "Memo"], Ends]
NONE: Ends = frozenset()


class Memo:
    """One match's state: each rule's end positions by start position, and the furthest byte
    the input was read to (for the error message)."""

    __slots__ = ("ends", "far")

    def __init__(self) -> None:
        self.ends: dict[tuple[int, int], Ends] = {}
        self.far = 0


# -- reading the ABNF (RFC 5234) ---------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<space>[ \t]+)
  | (?P<comment>;[^\n]*)
  | (?P<string>%[si])?"(?P<chars>[^"]*)"
  | %(?P<base>[xdb])(?P<num>[0-9A-Fa-f]+(?:(?:\.[0-9A-Fa-f]+)+|-[0-9A-Fa-f]+)?)
  | (?P<repeat>\d*\*\d*|\d+)
  | (?P<name>[A-Za-z][A-Za-z0-9-]*)
  | (?P<punct>[/()\[\]])
""", re.VERBOSE)
_BASES = {"x": 16, "d": 10, "b": 2}


def _rules(text: str) -> dict[str, list[tuple[str, str]]]:
    """The ABNF's rules, each as its list of tokens (kind, text); continuation lines (indented)
    belong to the rule above, names are case-insensitive (RFC 5234 2.1)."""
    rules: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        if not line[0].isspace():
            name, sep, line = line.partition("=")
            if not sep:
                raise ValueError(f"not an ABNF rule: {name!r}")
            key = name.strip().lower()
            incremental = line.startswith("/")  # "=/" adds alternatives to a rule
            if incremental:
                line = line[1:]
                current = rules[key]
                current.append(("punct", "/"))
            else:
                current = rules[key] = []
        if current is None:
            raise ValueError("an ABNF continuation line before any rule")
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if m is None:
                raise ValueError(f"unreadable ABNF at {line[pos:pos + 20]!r}")
            pos = m.end()
            kind = m.lastgroup or ""
            if kind in ("space", "comment"):
                continue
            if m.group("chars") is not None:
                current.append(("cs" if m.group("string") == "%s" else "ci", m.group("chars")))
            elif m.group("base"):
                current.append(("num", m.group("base") + m.group("num")))
            else:
                current.append((kind, m.group(kind)))
    return rules


class _Compiler:
    """Turns the token lists into matchers, each rule on first use (so a rule that is not
    recursive is compiled before its users). A rule that is one byte class (``digit``, ``SP``,
    ``alpha``...) is used in place; any other reference goes through the memo."""

    def __init__(self, rules: dict[str, list[tuple[str, str]]]) -> None:
        self.rules = rules
        self.index = {name: i for i, name in enumerate(rules)}
        self.compiled: list[Matcher | None] = [None] * len(rules)
        self.busy: set[str] = set()
        for name in rules:
            self.rule(name)

    def rule(self, name: str) -> Matcher:
        """The rule's matcher (compiling it now if need be)."""
        i = self.index[name]
        done = self.compiled[i]
        if done is not None:
            return done
        self.busy.add(name)
        saved = getattr(self, "tokens", None), getattr(self, "pos", 0)
        self.tokens, self.pos = self.rules[name], 0
        node = self.alternation()
        if self.pos != len(self.tokens):
            raise ValueError(f"ABNF rule {name!r}: unexpected {self.tokens[self.pos][1]!r}")
        self.tokens, self.pos = saved  # type: ignore[assignment]
        self.busy.discard(name)
        self.compiled[i] = node
        return node

    # recursive descent over RFC 5234's own grammar
    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def alternation(self) -> Matcher:
        alts = [self.concatenation()]
        while self.peek() == ("punct", "/"):
            self.pos += 1
            alts.append(self.concatenation())
        return _alt(alts)

    def concatenation(self) -> Matcher:
        items: list[Matcher] = []
        while (tok := self.peek()) is not None and tok not in (("punct", "/"), ("punct", ")"), ("punct", "]")):
            items.append(self.repetition())
        if not items:
            raise ValueError("empty ABNF concatenation")
        return items[0] if len(items) == 1 else _seq(items)

    def repetition(self) -> Matcher:
        tok = self.peek()
        lo, hi = 1, 1
        if tok is not None and tok[0] == "repeat":
            self.pos += 1
            a, star, b = tok[1].partition("*")
            lo = int(a) if a else (0 if star else 1)
            hi = (int(b) if b else -1) if star else lo
        node = self.element()
        return node if (lo, hi) == (1, 1) else _rep(node, lo, hi)

    def element(self) -> Matcher:
        tok = self.peek()
        if tok is None:
            raise ValueError("ABNF rule ends early")
        self.pos += 1
        kind, text = tok
        if kind == "name":
            key = text.lower()
            if key not in self.index:
                raise ValueError(f"ABNF rule {key!r} is not defined")
            if key in self.busy:  # recursive: through the memo, compiled by then
                return _ref(self.index[key], self.compiled, None)
            target = self.rule(key)
            if _byte_class(target) is not None:
                return target
            return _ref(self.index[key], self.compiled, _first(target))
        if kind == "ci":
            return _bytes([frozenset({b, *bytes(chr(b), "ascii").swapcase()}) if chr(b).isalpha() else frozenset({b})
                           for b in text.encode("ascii")])
        if kind == "cs":
            return _bytes([frozenset({b}) for b in text.encode("ascii")])
        if kind == "num":
            base = _BASES[text[0].lower()]
            if "-" in text:
                lo, hi = (int(v, base) for v in text[1:].split("-"))
                return _bytes([frozenset(range(lo, hi + 1))])
            return _bytes([frozenset({int(v, base)}) for v in text[1:].split(".")])
        if (kind, text) in (("punct", "("), ("punct", "[")):
            node = self.alternation()
            close = ")" if text == "(" else "]"
            if self.peek() != ("punct", close):
                raise ValueError(f"ABNF group without {close!r}")
            self.pos += 1
            return node if text == "(" else _rep(node, 0, 1)
        raise ValueError(f"unexpected ABNF token {text!r}")


# Matchers carry what is known of them statically, as function attributes:
# ``byte_class`` (it matches exactly one byte of this set) and ``first`` (every match starts with
# a byte of this set, so it never matches nothing) -- an alternation skips an alternative whose
# first byte cannot be there, a repetition of one byte class scans.
def _byte_class(m: Matcher) -> frozenset[int] | None:
    return getattr(m, "byte_class", None)


def _first(m: Matcher) -> frozenset[int] | None:
    return getattr(m, "first", None)


def _bytes(sets: list[frozenset[int]]) -> Matcher:
    """A fixed run of bytes, each from its set (a literal, a range, a case-insensitive string)."""
    if len(sets) == 1:
        only = sets[0]

        def one(data: bytes, pos: int, memo: Memo) -> Ends:
            if pos < len(data) and data[pos] in only:
                return frozenset((pos + 1,))
            if pos > memo.far:
                memo.far = pos
            return NONE
        one.byte_class = one.first = only  # type: ignore[attr-defined]
        return one

    def run(data: bytes, pos: int, memo: Memo) -> Ends:
        for k, allowed in enumerate(sets):
            if pos + k >= len(data) or data[pos + k] not in allowed:
                if pos + k > memo.far:
                    memo.far = pos + k
                return NONE
        return frozenset((pos + len(sets),))
    run.first = sets[0]  # type: ignore[attr-defined]
    return run


def _seq(items: list[Matcher]) -> Matcher:
    def seq(data: bytes, pos: int, memo: Memo) -> Ends:
        ends: Ends = frozenset((pos,))
        for item in items:
            if len(ends) == 1:
                for p in ends:
                    ends = item(data, p, memo)
            else:
                out: set[int] = set()
                for p in ends:
                    out |= item(data, p, memo)
                ends = frozenset(out)
            if not ends:
                return NONE
        return ends
    first = _first(items[0])
    if first is not None:
        seq.first = first  # type: ignore[attr-defined]
    return seq


def _alt(alts: list[Matcher]) -> Matcher:
    merged: list[Matcher] = []
    for a in alts:  # one-byte alternatives side by side: one byte class
        cls, prev = _byte_class(a), _byte_class(merged[-1]) if merged else None
        if cls is not None and prev is not None:
            merged[-1] = _bytes([prev | cls])
        else:
            merged.append(a)
    if len(merged) == 1:
        return merged[0]
    firsts = [_first(a) for a in merged]
    guarded = tuple(zip(merged, firsts, strict=True))

    def alt(data: bytes, pos: int, memo: Memo) -> Ends:
        byte = data[pos] if pos < len(data) else -1
        out: set[int] = set()
        for a, first in guarded:
            if first is None or byte in first:
                out |= a(data, pos, memo)
            elif pos > memo.far:
                memo.far = pos
        return frozenset(out)
    known = [f for f in firsts if f is not None]
    if len(known) == len(firsts):
        alt.first = frozenset().union(*known)  # type: ignore[attr-defined]
    return alt


def _rep(node: Matcher, lo: int, hi: int) -> Matcher:
    """``lo*hi`` repetitions (``hi`` -1: unbounded), breadth first by count: a position already
    expanded at an allowed count is not expanded again (the rest of the match from it is the
    same), which also ends loops over an element that can match nothing."""
    cls = _byte_class(node)
    if cls is not None:
        def scan(data: bytes, pos: int, memo: Memo) -> Ends:
            end, limit = pos, len(data) if hi < 0 else min(len(data), pos + hi)
            while end < limit and data[end] in cls:
                end += 1
            if end > memo.far:
                memo.far = end
            return frozenset(range(pos + lo, end + 1)) if end - pos >= lo else NONE
        if lo > 0:
            scan.first = cls  # type: ignore[attr-defined]
        return scan

    def rep(data: bytes, pos: int, memo: Memo) -> Ends:
        frontier: Ends = frozenset((pos,))
        found: set[int] = {pos} if lo == 0 else set()
        seen: set[int] = set(found)
        count = 0
        while frontier and count != hi:
            count += 1
            reached: set[int] = set()
            for p in frontier:
                reached |= node(data, p, memo)
            if count >= lo:
                frontier = frozenset(reached - seen)
                seen |= reached
                found |= reached
            else:
                frontier = frozenset(reached)
        return frozenset(found)
    first = _first(node)
    if lo > 0 and first is not None:
        rep.first = first  # type: ignore[attr-defined]
    return rep


def _ref(index: int, compiled: list[Matcher | None], first: frozenset[int] | None) -> Matcher:
    def ref(data: bytes, pos: int, memo: Memo) -> Ends:
        key = (index, pos)
        got = memo.ends.get(key)
        if got is None:
            memo.ends[key] = NONE  # a left-recursive use sees no parse (ECL's ABNF has none)
            rule = compiled[index]
            assert rule is not None
            got = memo.ends[key] = rule(data, pos, memo)
        return got
    if first is not None:
        ref.first = first  # type: ignore[attr-defined]
    return ref


class Grammar:
    """One ABNF grammar, compiled, matched from its start rule."""

    def __init__(self, text: str, start: str = START) -> None:
        compiler = _Compiler(_rules(text))
        self.start = compiler.compiled[compiler.index[start.lower()]]

    def match(self, data: bytes) -> tuple[bool, int]:
        """(whether the whole of ``data`` derives from the start rule, the furthest byte read)."""
        memo = Memo()
        assert self.start is not None
        ends = self.start(data, 0, memo)
        return len(data) in ends, memo.far


@lru_cache(maxsize=1)
def grammars() -> tuple[Grammar, ...]:
    """The vendored ECL grammars, compiled once, on first use."""
    return tuple(Grammar((DATA / name).read_text(encoding="utf-8")) for name in GRAMMARS)


@lru_cache(maxsize=512)
def ecl_syntax_error(text: str) -> str | None:
    """Why ``text`` is not an ECL expression; ``None`` if it is one (or cannot be judged)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_BYTES:
        return None
    far = 0
    try:
        for grammar in grammars():
            ok, reached = grammar.match(data)
            if ok:
                return None
            far = max(far, reached)
    except RecursionError:
        return None
    at = len(data[:far].decode("utf-8", "ignore"))
    if at >= len(text):
        return "parse error: the expression ends early"
    return f"parse error at character {at + 1} ({text[at:at + 20]!r})"

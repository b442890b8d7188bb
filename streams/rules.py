"""The rule language: mercure-compatible selection rules and study-completion expressions.

Selection rules are Python expressions over the DICOM tags of a series, written exactly as in
mercure (``'CINE' in tags.SeriesDescription``, ``@Modality@ == 'CT'``,
``float(tags.SliceThickness) < 2.0``). Rule text is never compiled to code or run by ``eval`` or
``exec``: it is parsed with ``ast.parse(mode="eval")``, checked against a whitelist, and walked by
the small interpreter in this module. Everything here is pure: no I/O, no Kafka.

Language
    tags.Name       the tag's value; exact name first, then case-insensitive
    tags["Name"]    the tag's value; exact name only
    @Name@          shorthand for tags["Name"], so ``@Modality@ == 'CT'`` (an ``@Name@`` inside a
                    quoted string is left as text, so ``'@Modality@' == 'CT'`` never matches)
    'Name' in tags  whether the series has the tag
    values          every tag value is a string; constants are str, int, float, True/False/None;
                    list, tuple and set displays
    operators       and, or, not; == != < <= > >= (chained); in, not in; + - * / // % **;
                    unary - +; ``a if c else b``; subscripts and slices of str, list and tuple
    functions       int float str bool len min max abs round (positional arguments only)
    str methods     see ``STRING_METHODS``

Outcomes of ``evaluate``
    matched         the Python truthiness of the value, as mercure (``True if result else False``)
    missing tag     a rule that reads a tag the series lacks does not match and reports no error,
                    even when the read sits in one branch of ``or`` (as in mercure); guard optional
                    tags with ``'Name' in tags and ...``
    anything else   does not match; ``error`` holds the text of one of the exceptions below

Exceptions (``RuleError`` and its subclasses; ``evaluate`` turns them into ``RuleOutcome.error``)
    RuleError               base class
    ├── RuleSyntaxError     the text is not an expression of the language
    ├── RuleRefused         a construct outside the language: other names, imports, names or
    │                       attributes starting with ``_``, non-whitelisted methods, lambdas,
    │                       comprehensions, f-strings, ``:=``, ``is``, keyword arguments, ...
    ├── RuleLimitExceeded   one of the limits below
    └── RuleRuntimeError    the expression raised, e.g. ``int('abc')``, ``1 / 0``, ``'a' < 1``

Limits
    MAX_RULE_LENGTH     characters of rule (or completion expression) text
    MAX_DEPTH           levels of nesting in the syntax tree
    MAX_NODES           nodes in the syntax tree; there are no loops, so each node is evaluated at
                        most once and this also bounds the number of evaluation steps
    MAX_VALUE_SIZE      characters plus items in any value the rule builds, checked *before*
                        repetition and ``replace`` run, so ``'a' * 10**9`` is never built
    MAX_INT_BITS        bits of any integer; ``**`` is refused before it runs when the result
                        would surely exceed it (so ``9**9**9`` is never computed)
    MAX_ROUND_DIGITS    largest ``ndigits`` accepted by ``round``
    TIME_LIMIT_SECONDS  CPU-time budget of one ``evaluate`` call, checked at every step; CPU time
                        of the evaluating thread, so a busy machine does not fail a good rule
"""

from __future__ import annotations

import ast
import functools
import operator
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_NODES",
    "MAX_ROUND_DIGITS",
    "MAX_RULE_LENGTH",
    "MAX_VALUE_SIZE",
    "STRING_METHODS",
    "TIME_LIMIT_SECONDS",
    "RuleError",
    "RuleLimitExceeded",
    "RuleOutcome",
    "RuleRefused",
    "RuleRuntimeError",
    "RuleSyntaxError",
    "check",
    "check_completion_series",
    "completion_series_met",
    "evaluate",
    "referenced_tags",
]

MAX_RULE_LENGTH: Final = 10_000
MAX_DEPTH: Final = 50
MAX_NODES: Final = 2_000
MAX_VALUE_SIZE: Final = 100_000
MAX_INT_BITS: Final = 4_096
MAX_ROUND_DIGITS: Final = 100
TIME_LIMIT_SECONDS: Final = 0.25

STRING_METHODS: Final = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "isalnum",
        "isalpha",
        "isdigit",
        "isnumeric",
        "isspace",
        "lower",
        "lstrip",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rsplit",
        "rstrip",
        "split",
        "startswith",
        "strip",
        "title",
        "upper",
    }
)


class RuleError(Exception):
    """A rule or completion expression that cannot be evaluated; the text is shown in the UI."""


class RuleSyntaxError(RuleError):
    """The text is not an expression of the language."""


class RuleRefused(RuleError):
    """The expression uses a construct outside the whitelisted language."""


class RuleLimitExceeded(RuleError):
    """The expression exceeds a size, depth or time limit."""


class RuleRuntimeError(RuleError):
    """The expression raised while it was evaluated (bad conversion, division by zero, ...)."""


class _TagNotFound(Exception):
    """The rule read a tag the series does not have: no match, and not an error (as mercure)."""


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """Whether a rule matched a series, and why not if it could not be evaluated."""

    matched: bool
    error: str | None


# --------------------------------------------------------------------------- selection rules


def evaluate(
    rule: str, tags: Mapping[str, str], *, time_limit: float = TIME_LIMIT_SECONDS
) -> RuleOutcome:
    """Evaluate ``rule`` against a series' tags; never raises."""
    budget = _CpuBudget(seconds=time_limit)
    try:
        expression = _compile(rule)
        value = _Interpreter(_TagView(tags), budget=budget).run(expression)
        return RuleOutcome(matched=bool(value), error=None)
    except _TagNotFound:
        return RuleOutcome(matched=False, error=None)
    except RuleError as exc:
        return RuleOutcome(matched=False, error=str(exc))


def check(rule: str) -> str | None:
    """Syntax and safety problems of ``rule`` found without tags; None when it is fine."""
    try:
        _compile(rule)
    except RuleError as exc:
        return str(exc)
    return None


def referenced_tags(rule: str) -> set[str]:
    """Tag names the rule reads, as written (empty when the rule does not compile)."""
    try:
        expression = _compile(rule)
    except RuleError:
        return set()
    return {name for node in ast.walk(expression) for name in _tag_names_read_by(node)}


def _tag_names_read_by(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Attribute) and _is_tags(node.value):
        return [node.attr]
    if isinstance(node, ast.Subscript) and _is_tags(node.value):
        return _str_constants([node.slice])
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        return _str_constants(
            left
            for left, op, right in zip(operands, node.ops, operands[1:], strict=False)
            if isinstance(op, ast.In | ast.NotIn) and _is_tags(right)
        )
    return []


def _is_tags(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "tags"


def _str_constants(nodes: Iterable[ast.AST]) -> list[str]:
    return [
        node.value
        for node in nodes
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


# ---------------------------------------------------------------- compiling: text to checked AST


@functools.lru_cache(maxsize=1024)
def _compile(rule: str) -> ast.expr:
    """Rule text to a whitelisted expression tree (cached: rules are evaluated per series)."""
    _check_length(rule)
    tree = _parse(_substitute_tag_references(rule))
    _check_tree(tree)
    return tree


def _check_length(text: str) -> None:
    if len(text) > MAX_RULE_LENGTH:
        raise RuleLimitExceeded(
            f"limit exceeded: {len(text)} characters, at most {MAX_RULE_LENGTH} allowed"
        )


_STRING_OR_TAG_REFERENCE: Final = re.compile(
    r"""(?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|@(?P<tag>[A-Za-z0-9_.,:\-]+)@"""
)


def _substitute_tag_references(rule: str) -> str:
    """Rewrite each ``@Name@`` outside string literals as ``tags["Name"]``, as mercure does.

    mercure also rewrites inside literals; there the result is only text either way.
    """

    def replace(match: re.Match[str]) -> str:
        tag = match.group("tag")
        return match.group(0) if tag is None else f"tags[{tag!r}]"

    return _STRING_OR_TAG_REFERENCE.sub(replace, rule)


def _parse(text: str) -> ast.expr:
    try:
        with warnings.catch_warnings():
            # Invalid escapes such as '\d' only warn in Python, and mercure accepts them.
            warnings.simplefilter("ignore")
            return ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise RuleSyntaxError(f"syntax error: {exc.msg}{where}") from None
    except (RecursionError, MemoryError):
        raise RuleLimitExceeded("limit exceeded: the expression is nested too deeply") from None
    except Exception as exc:  # e.g. UnicodeEncodeError for lone surrogates
        raise RuleSyntaxError(f"syntax error: {type(exc).__name__}: {exc}") from None


_ALLOWED_NODES: Final = frozenset(
    {
        ast.Constant,
        ast.Name,
        ast.Attribute,
        ast.Subscript,
        ast.Slice,
        ast.BoolOp,
        ast.UnaryOp,
        ast.BinOp,
        ast.Compare,
        ast.IfExp,
        ast.Call,
        ast.List,
        ast.Tuple,
        ast.Set,
        ast.Load,
        ast.And,
        ast.Or,
        ast.Not,
        ast.USub,
        ast.UAdd,
        ast.Add,
        ast.Sub,
        ast.Mult,
        ast.Div,
        ast.FloorDiv,
        ast.Mod,
        ast.Pow,
        ast.Eq,
        ast.NotEq,
        ast.Lt,
        ast.LtE,
        ast.Gt,
        ast.GtE,
        ast.In,
        ast.NotIn,
    }
)

_REFUSED_DESCRIPTIONS: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Dict: "dict displays",
    ast.Starred: "* unpacking",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Is: "'is' (use ==)",
    ast.IsNot: "'is not' (use !=)",
    ast.MatMult: "operator '@' (write a tag as @Name@)",
    ast.BitAnd: "bitwise operators",
    ast.BitOr: "bitwise operators",
    ast.BitXor: "bitwise operators",
    ast.LShift: "bitwise operators",
    ast.RShift: "bitwise operators",
    ast.Invert: "bitwise operators",
}

_CONSTANT_TYPES: Final = (str, int, float, bool, type(None))


def _check_tree(root: ast.expr) -> None:
    """Walk the tree without recursion, enforcing node count, depth and the whitelist."""
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise RuleLimitExceeded(f"limit exceeded: more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise RuleLimitExceeded(f"limit exceeded: nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in _check_node(node))


def _check_node(node: ast.AST) -> list[ast.AST]:
    """Check one node against the whitelist; return the children still to be checked."""
    if type(node) not in _ALLOWED_NODES:
        description = _REFUSED_DESCRIPTIONS.get(type(node), type(node).__name__)
        raise RuleRefused(f"not allowed: {description}")
    if isinstance(node, ast.Call):
        return _check_call(node)
    if isinstance(node, ast.Name):
        _check_name(node.id)
    elif isinstance(node, ast.Attribute):
        _check_tag_attribute(node)
    elif isinstance(node, ast.Constant):
        _check_constant(node.value)
    return list(ast.iter_child_nodes(node))


def _check_call(node: ast.Call) -> list[ast.AST]:
    if node.keywords:
        raise RuleRefused("not allowed: keyword arguments")
    func = node.func
    if isinstance(func, ast.Name):
        _check_underscore(func.id)
        if func.id not in _FUNCTIONS:
            raise RuleRefused(f"not allowed: function {func.id!r}")
        return list(node.args)
    if isinstance(func, ast.Attribute):
        _check_underscore(func.attr)
        if _is_tags(func.value):
            raise RuleRefused(f"not allowed: calling tags.{func.attr}, which is a tag value")
        if func.attr not in STRING_METHODS:
            raise RuleRefused(f"not allowed: method {func.attr!r}")
        return [func.value, *node.args]
    raise RuleRefused("not allowed: only named functions and string methods can be called")


def _check_name(name: str) -> None:
    _check_underscore(name)
    if name in _FUNCTIONS:
        raise RuleRefused(f"not allowed: {name!r} must be called, as {name}(...)")
    if name != "tags":
        raise RuleRefused(f"not allowed: unknown name {name!r} (tags are read as tags.{name})")


def _check_tag_attribute(node: ast.Attribute) -> None:
    _check_underscore(node.attr)
    if not _is_tags(node.value):
        raise RuleRefused(
            f"not allowed: attribute {node.attr!r}; only tags.Name and string method calls"
        )


def _check_underscore(name: str) -> None:
    if name.startswith("_"):
        raise RuleRefused(f"not allowed: names starting with '_' ({name!r})")


def _check_constant(value: object) -> None:
    if not isinstance(value, _CONSTANT_TYPES):
        raise RuleRefused(f"not allowed: constant of type {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise RuleLimitExceeded(f"limit exceeded: integer constant over {MAX_INT_BITS} bits")


# ---------------------------------------------------------------------- evaluating a checked AST


class _TagView:
    """What the name ``tags`` stands for: read access to the series' tags, nothing else."""

    __slots__ = ("_tags",)

    def __init__(self, tags: Mapping[str, str]) -> None:
        self._tags = tags

    def by_attribute(self, name: str) -> str:
        """``tags.Name``: exact name first, then case-insensitive (mercure's Tags.__getattr__)."""
        if name in self._tags:
            return self._tags[name]
        lowered = name.lower()
        for key, value in self._tags.items():
            if key.lower() == lowered:
                return value
        raise _TagNotFound(name)

    def by_key(self, key: object) -> str:
        """``tags["Name"]``: exact name only (mercure's Tags.__getitem__)."""
        if isinstance(key, str) and key in self._tags:
            return self._tags[key]
        raise _TagNotFound(key)

    def has(self, key: object) -> bool:
        return isinstance(key, str) and key in self._tags

    def __len__(self) -> int:
        return len(self._tags)


_ARITHMETIC: Final[Mapping[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_UNARY: Final[Mapping[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, _TagView):
        return container.has(item)
    return bool(item in container)


_COMPARISONS: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda left, right: _contains(right, left),
    ast.NotIn: lambda left, right: not _contains(right, left),
}

_COLLECTIONS: Final = (list, tuple, set, frozenset)
_MAX_INT_TEXT: Final = MAX_INT_BITS + 100  # a base-2 literal of MAX_INT_BITS, with some spaces
_SIZED: Final = (str, *_COLLECTIONS)
_VALUE_TYPES: Final = (*_CONSTANT_TYPES, *_COLLECTIONS, _TagView)


class _CpuBudget:
    """CPU time of this thread, so a busy machine does not turn a good rule into an error.

    Reading the thread's CPU clock is a system call (about 18 µs on these machines, more than
    a whole short rule), so the clock is read every 8 steps only and first at step 8: a rule
    shorter than that cannot run long, as rules have no loops.
    """

    __slots__ = ("_deadline", "_seconds", "_steps")
    _EVERY = 8

    def __init__(self, *, seconds: float) -> None:
        self._seconds = seconds
        self._deadline: float | None = None
        self._steps = 0

    def check(self) -> None:
        self._steps += 1
        if self._steps % self._EVERY:
            return
        now = time.thread_time()
        if self._deadline is None:
            self._deadline = now + self._seconds
        elif now > self._deadline:
            raise RuleLimitExceeded(
                f"limit exceeded: evaluation took more than {self._seconds} s of CPU time"
            )


class _Interpreter:
    """Evaluates a tree that passed ``_check_tree``; one instance per evaluation."""

    def __init__(self, tags: _TagView, *, budget: _CpuBudget) -> None:
        self._tags = tags
        self._budget = budget

    def run(self, expression: ast.expr) -> object:
        try:
            return self._eval(expression)
        except (RuleError, _TagNotFound):
            raise
        except Exception as exc:
            raise RuleRuntimeError(f"{type(exc).__name__}: {exc}") from None

    def _eval(self, node: ast.expr) -> object:
        self._budget.check()
        match node:
            case ast.Constant():
                return node.value
            case ast.Name():
                return self._name(node.id)
            case ast.Attribute():
                return self._tag_attribute(node)
            case ast.Subscript():
                return self._subscript(node)
            case ast.BoolOp():
                return self._bool_op(node)
            case ast.UnaryOp():
                return _UNARY[type(node.op)](self._eval(node.operand))
            case ast.BinOp():
                return _binary(node.op, self._eval(node.left), self._eval(node.right))
            case ast.Compare():
                return self._compare(node)
            case ast.IfExp():
                chosen = node.body if self._eval(node.test) else node.orelse
                return self._eval(chosen)
            case ast.Call():
                return self._call(node)
            case ast.List():
                return _checked([self._eval(item) for item in node.elts])
            case ast.Tuple():
                return _checked(tuple(self._eval(item) for item in node.elts))
            case ast.Set():
                return _checked({self._eval(item) for item in node.elts})
        raise RuleRefused(f"not allowed: {type(node).__name__}")

    def _name(self, name: str) -> object:
        if name != "tags":
            raise RuleRefused(f"not allowed: unknown name {name!r}")
        return self._tags

    def _tag_attribute(self, node: ast.Attribute) -> str:
        if not _is_tags(node.value):
            raise RuleRefused(f"not allowed: attribute {node.attr!r}")
        return self._tags.by_attribute(node.attr)

    def _subscript(self, node: ast.Subscript) -> object:
        container: Any = self._eval(node.value)
        index = self._index(node.slice)
        if isinstance(container, _TagView):
            return container.by_key(index)
        return operator.getitem(container, index)

    def _index(self, node: ast.expr) -> object:
        if isinstance(node, ast.Slice):
            return slice(
                self._optional(node.lower), self._optional(node.upper), self._optional(node.step)
            )
        return self._eval(node)

    def _optional(self, node: ast.expr | None) -> object:
        return None if node is None else self._eval(node)

    def _bool_op(self, node: ast.BoolOp) -> object:
        stop_when_true = isinstance(node.op, ast.Or)
        value: object = None
        for operand in node.values:
            value = self._eval(operand)
            if bool(value) is stop_when_true:
                return value
        return value

    def _compare(self, node: ast.Compare) -> bool:
        left = self._eval(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self._eval(comparator)
            if not _COMPARISONS[type(op)](left, right):
                return False
            left = right
        return True

    def _call(self, node: ast.Call) -> object:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = self._eval(func.value)
            arguments = [self._eval(argument) for argument in node.args]
            return _checked(_call_method(receiver, func.attr, arguments))
        if isinstance(func, ast.Name):
            arguments = [self._eval(argument) for argument in node.args]
            return _checked(_call_function(func.id, arguments))
        raise RuleRefused("not allowed: only named functions and string methods can be called")


def _binary(op: ast.operator, left: object, right: object) -> object:
    if isinstance(op, ast.Mult):
        _guard_repetition(left, right)
    elif isinstance(op, ast.Pow):
        _guard_power(left, right)
    elif isinstance(op, ast.Mod) and isinstance(left, str):
        raise RuleRefused("not allowed: '%' string formatting")
    return _checked(_ARITHMETIC[type(op)](left, right))


def _guard_repetition(left: object, right: object) -> None:
    """Refuse ``sequence * n`` before it runs when the result would be too large."""
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(times, int):
            _refuse_if_larger(_size(sequence) * times, what="repetition")


def _refuse_if_larger(size: int, *, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise RuleLimitExceeded(
            f"limit exceeded: {what} would build more than {MAX_VALUE_SIZE} characters or items"
        )


def _guard_power(base: object, exponent: object) -> None:
    """Refuse integer powers that surely exceed MAX_INT_BITS before they run.

    What passes costs at most twice MAX_INT_BITS to compute; ``_checked`` refuses it after.
    """
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return
    if exponent > 0 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise RuleLimitExceeded(f"limit exceeded: power over {MAX_INT_BITS} bits")


def _size(value: object, budget: int = MAX_VALUE_SIZE) -> int:
    """Characters of strings plus items of collections, counted until ``budget`` is passed."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, _COLLECTIONS):
        return 1
    total = len(value)
    if total > budget:
        return total
    kinds = set(map(type, value))  # C speed for the usual lists of numbers or of strings
    if kinds.isdisjoint(_SIZED):
        return total
    if kinds == {str}:
        return total + sum(map(len, value))
    for item in value:
        if total > budget:
            break
        if isinstance(item, _SIZED):
            total += _size(item, budget - total)
    return total


def _checked(value: object) -> object:
    """Refuse a value the rule built that is of a foreign type or too large."""
    if not isinstance(value, _VALUE_TYPES):
        raise RuleRefused(f"not allowed: a value of type {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise RuleLimitExceeded(f"limit exceeded: integer over {MAX_INT_BITS} bits")
    if _size(value) > MAX_VALUE_SIZE:
        raise RuleLimitExceeded(f"limit exceeded: value over {MAX_VALUE_SIZE} characters or items")
    return value


def _to_int(value: Any = 0, *base: Any) -> int:
    # Text-to-int conversion is quadratic; the interpreter's own int-digit limit is global state.
    if isinstance(value, str) and len(value) > _MAX_INT_TEXT:
        raise RuleLimitExceeded(f"limit exceeded: int() of text over {_MAX_INT_TEXT} characters")
    return int(value, *base)


def _to_str(value: object = "") -> str:
    if isinstance(value, _COLLECTIONS):
        raise RuleRefused("not allowed: str() of a list, tuple or set")
    return str(value)


def _length(value: Any) -> int:
    return len(value)


def _round(number: Any, ndigits: Any = None) -> Any:
    if isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise RuleLimitExceeded(f"limit exceeded: round() to more than {MAX_ROUND_DIGITS} digits")
    return round(number, ndigits)


_FUNCTIONS: Final[Mapping[str, Callable[..., object]]] = {
    "int": _to_int,
    "float": float,
    "str": _to_str,
    "bool": bool,
    "len": _length,
    "min": min,
    "max": max,
    "abs": abs,
    "round": _round,
}


def _call_function(name: str, arguments: Sequence[object]) -> object:
    if name not in _FUNCTIONS:
        raise RuleRefused(f"not allowed: function {name!r}")
    if name != "len" and any(isinstance(argument, _TagView) for argument in arguments):
        raise RuleRefused(f"not allowed: {name}(tags); read a tag as tags.Name")
    return _FUNCTIONS[name](*arguments)


def _call_method(receiver: object, name: str, arguments: Sequence[object]) -> object:
    if name not in STRING_METHODS:
        raise RuleRefused(f"not allowed: method {name!r}")
    if not isinstance(receiver, str):
        raise RuleRefused(
            f"not allowed: {name}() on {type(receiver).__name__}; methods are for strings"
        )
    if name == "replace":
        _guard_replace(receiver, arguments)
    method: Callable[..., object] = getattr(receiver, name)
    return method(*arguments)


def _guard_replace(text: str, arguments: Sequence[object]) -> None:
    """Refuse ``str.replace`` before it runs when the result would be too large."""
    if len(arguments) < 2 or not all(isinstance(argument, str) for argument in arguments[:2]):
        return  # str.replace itself reports the wrong arguments
    old, new = str(arguments[0]), str(arguments[1])
    occurrences = text.count(old)
    limit = arguments[2] if len(arguments) > 2 else -1
    if isinstance(limit, int) and limit >= 0:
        occurrences = min(occurrences, limit)
    _refuse_if_larger(len(text) + occurrences * (len(new) - len(old)), what="replace()")


# ------------------------------------------------------------------ study completion expressions
#
# mercure's "received_series" condition: quoted series descriptions combined with and/or/not and
# parentheses. A quoted text is met when it is a case-insensitive substring of the description of
# any received series. Parsed here by a small recursive-descent parser; nothing is evaluated.


@dataclass(frozen=True, slots=True)
class _Series:
    text: str

    def met(self, descriptions: Sequence[str]) -> bool:
        needle = self.text.lower()
        return any(needle in description for description in descriptions)


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Condition

    def met(self, descriptions: Sequence[str]) -> bool:
        return not self.operand.met(descriptions)


@dataclass(frozen=True, slots=True)
class _All:
    parts: tuple[_Condition, ...]

    def met(self, descriptions: Sequence[str]) -> bool:
        return all(part.met(descriptions) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Any:
    parts: tuple[_Condition, ...]

    def met(self, descriptions: Sequence[str]) -> bool:
        return any(part.met(descriptions) for part in self.parts)


_Condition: TypeAlias = _Series | _Not | _All | _Any


def completion_series_met(expression: str, received_descriptions: Iterable[str]) -> bool:
    """Whether the received series descriptions satisfy a completion expression.

    As mercure: False when nothing was received, True for an empty expression, False for an
    expression that does not parse.
    """
    descriptions = [description.lower() for description in received_descriptions]
    if not descriptions:
        return False
    if not expression.strip():
        return True
    try:
        condition = _parse_completion(expression)
    except RuleError:
        return False
    return condition.met(descriptions)


def check_completion_series(expression: str) -> str | None:
    """Problems of a completion expression; None when it is fine."""
    if not expression.strip():
        return "Value cannot be empty"
    try:
        _parse_completion(expression)
    except RuleError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "series", "and", "or", "not", "(", ")"
    text: str
    position: int


_COMPLETION_TOKEN: Final = re.compile(r"\s*(?:'(?P<series>[^']*)'|(?P<word>\w+)|(?P<symbol>\S))")
_COMPLETION_WORDS: Final = frozenset({"and", "or", "not"})


def _parse_completion(expression: str) -> _Condition:
    _check_length(expression)
    return _CompletionParser(_completion_tokens(expression)).parse()


def _completion_tokens(expression: str) -> list[_Token]:
    return [_completion_token(match) for match in _COMPLETION_TOKEN.finditer(expression)]


def _completion_token(match: re.Match[str]) -> _Token:
    position = match.start(match.lastgroup or 0)
    if (series := match.group("series")) is not None:
        return _Token("series", series, position - 1)  # the opening quote
    text = match.group("word") or match.group("symbol")
    if text in _COMPLETION_WORDS or text in ("(", ")"):
        return _Token(text, text, position)
    if text == "'":
        raise RuleSyntaxError("Series names not properly enclosed by '...'")
    if text == '"':
        raise RuleSyntaxError("Series names must be enclosed by '...', not \"...\"")
    raise RuleSyntaxError(f"Invalid entry {text!r}. Are all series names enclosed by '...'?")


class _CompletionParser:
    """any := all ('or' all)* ; all := not ('and' not)* ; not := 'not' not | atom ;
    atom := 'series' | '(' any ')'"""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._next = 0

    def parse(self) -> _Condition:
        condition = self._any(depth=1)
        if self._peek() is not None:
            raise RuleSyntaxError(f"Unexpected {self._describe_next()}")
        return condition

    def _any(self, *, depth: int) -> _Condition:
        parts = [self._all(depth=depth)]
        while self._accept("or"):
            parts.append(self._all(depth=depth))
        return parts[0] if len(parts) == 1 else _Any(tuple(parts))

    def _all(self, *, depth: int) -> _Condition:
        parts = [self._not(depth=depth)]
        while self._accept("and"):
            parts.append(self._not(depth=depth))
        return parts[0] if len(parts) == 1 else _All(tuple(parts))

    def _not(self, *, depth: int) -> _Condition:
        if depth > MAX_DEPTH:
            raise RuleLimitExceeded(f"limit exceeded: nested more than {MAX_DEPTH} levels deep")
        if self._accept("not"):
            return _Not(self._not(depth=depth + 1))
        return self._atom(depth=depth)

    def _atom(self, *, depth: int) -> _Condition:
        token = self._peek()
        if token is not None and token.kind == "series":
            self._next += 1
            return _Series(token.text)
        if self._accept("("):
            condition = self._any(depth=depth + 1)
            if not self._accept(")"):
                raise RuleSyntaxError(f"Expected ')' instead of {self._describe_next()}")
            return condition
        raise RuleSyntaxError(f"Expected a series name in '...' instead of {self._describe_next()}")

    def _peek(self) -> _Token | None:
        return self._tokens[self._next] if self._next < len(self._tokens) else None

    def _accept(self, kind: str) -> bool:
        token = self._peek()
        if token is None or token.kind != kind:
            return False
        self._next += 1
        return True

    def _describe_next(self) -> str:
        token = self._peek()
        if token is None:
            return "the end"
        shown = f"'{token.text}'" if token.kind == "series" else repr(token.text)
        return f"{shown} at position {token.position}"

"""Just enough of Go's text/template to run Ollama's chat templates on sample conversations.

Not a renderer for chats: templates.py runs a Modelfile's TEMPLATE here on a few fixed
conversations to recognise which named prompt format it spells. The subset is what
Ollama's own templates use: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming and
comments; fields (``.Role``, ``$.System``), variables (``$x :=``, ``$x =``); ``if`` /
``else if`` / ``else``, ``range`` (with ``$i, $m :=``), ``with``, ``break``, ``continue``;
pipelines with ``|``; and eq, ne, lt, le, gt, ge, not, and, or, len, index, slice, print,
printf, println, json. Anything else raises TemplateUnsupported. Safe on any input: no
recursion, loops only over the given lists, output bounded by them.
"""

from __future__ import annotations

import json
import re


class TemplateUnsupported(Exception):
    """Syntax or a feature outside the subset (or a Go template error)."""


class _Stop(Exception):
    """{{ .Response }} reached where Ollama cuts the last turn's template."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<num>-?\d+(?:\.\d+)?) |
    (?P<decl>:=) | (?P<assign>=) | (?P<punct>[()|,]) |
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*) | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.) |
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*))""", re.X)
_WS = " \t\r\n"


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip(_WS)
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateUnsupported(f"cannot read {text[pos:pos + 20]!r}")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


def _lex(src: str) -> list[tuple[str, object]]:
    """[("text", str) | ("action", tokens)], trimming applied."""
    parts: list[list] = []
    pos = 0
    for m in _ACTION.finditer(src):
        parts.append(["text", src[pos:m.start()]])
        body = m.group(2)
        if m.group(1):
            parts[-1][1] = parts[-1][1].rstrip(_WS)
        stripped = body.strip(_WS)
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise TemplateUnsupported("a comment that does not end")
            parts.append(["comment", None])
        else:
            parts.append(["action", _tokens(body)])
        parts.append(["trim", bool(m.group(3))])
        pos = m.end()
    if "{{" in src[pos:]:
        raise TemplateUnsupported("an action that does not end")
    parts.append(["text", src[pos:]])
    out, trim_next = [], False
    for kind, value in parts:
        if kind == "trim":
            trim_next = value
            continue
        if kind == "text" and trim_next:
            value = value.lstrip(_WS)
        trim_next = False
        if kind != "comment" and not (kind == "text" and value == ""):
            out.append((kind, value))
    return out


# --- parsing into nodes ---------------------------------------------------------------------

def parse(src: str) -> list:
    items = _lex(src)
    nodes, i, end = _parse_list(items, 0)
    if end is not None:
        raise TemplateUnsupported(f"unexpected {{{{ {end[0][1]} }}}}")
    return nodes


def _parse_list(items, i):
    """Nodes until an end/else action: (nodes, next index, the tokens that stopped it or None)."""
    nodes = []
    while i < len(items):
        kind, value = items[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        toks = value
        head = toks[0][1] if toks and toks[0][0] == "ident" else None
        if head in ("end", "else"):
            return nodes, i, toks
        if head in ("if", "with", "range"):
            node, i = _parse_block(head, toks[1:], items, i)
            nodes.append(node)
        elif head in ("break", "continue"):
            nodes.append((head,))
        elif head in ("define", "template", "block"):
            raise TemplateUnsupported(f"{head} is not supported")
        elif len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] in ("decl", "assign"):
            nodes.append(("set", toks[0][1], toks[1][0] == "decl", toks[2:]))
        else:
            nodes.append(("print", toks))
    return nodes, i, None


def _parse_block(head, toks, items, i):
    names: list[str] = []
    if head == "range":
        decl = next((k for k, t in enumerate(toks) if t[0] == "decl"), None)
        if decl is not None:
            names = [t[1] for t in toks[:decl] if t[0] == "var"]
            toks = toks[decl + 1:]
    body, i, stop = _parse_list(items, i)
    if stop is None:
        raise TemplateUnsupported(f"{head} without end")
    branches, orelse = [(toks, body)], []
    while stop[0][1] == "else":
        rest = stop[1:]
        if rest and rest[0] == ("ident", "if") and head == "if":
            body, i, stop = _parse_list(items, i)
            branches.append((rest[1:], body))
        elif not rest:
            orelse, i, stop = _parse_list(items, i)
            if stop is None or stop[0][1] != "end":
                raise TemplateUnsupported("else without end")
        else:
            raise TemplateUnsupported("unsupported else")
        if stop is None:
            raise TemplateUnsupported(f"{head} without end")
    return (head, branches, orelse, names), i


# --- running --------------------------------------------------------------------------------

def truth(v) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, str) or
                (isinstance(v, (str, list, dict, tuple)) and len(v) == 0))


def show(v) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{show(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _printf(fmt, *args):
    args = list(args)

    def one(m):
        verb = m.group(1)
        if verb == "%":
            return "%"
        if not args:
            return f"%!{verb}(MISSING)"
        v = args.pop(0)
        return show(v) if verb in "sv" else str(int(v)) if verb == "d" else repr(v) if verb == "q" else show(v)
    return re.sub(r"%([svdq%])", one, fmt)


def _cmp(op):
    def f(a, b):
        try:
            return op(a, b)
        except TypeError:
            raise TemplateUnsupported("incomparable values") from None
    return f


def _slice(x, *ij):
    if len(ij) > 2:
        raise TemplateUnsupported("slice with three indices")
    return x[ij[0]:ij[1]] if len(ij) == 2 else x[ij[0]:] if ij else x


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs), "ne": lambda a, b: a != b,
    "lt": _cmp(lambda a, b: a < b), "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b), "ge": _cmp(lambda a, b: a >= b),
    "not": lambda a: not truth(a), "len": lambda a: len(a), "index": lambda a, *ks: _index(a, ks),
    "slice": _slice, "print": lambda *a: "".join(show(x) for x in a),
    "println": lambda *a: " ".join(show(x) for x in a) + "\n", "printf": _printf,
    "json": lambda a: json.dumps(a, separators=(",", ":")),
}


def _index(a, keys):
    for k in keys:
        try:
            a = a[k]
        except (IndexError, KeyError, TypeError):
            raise TemplateUnsupported("index out of range") from None
    return a


class _Run:
    def __init__(self, root, stop_at_response: bool, budget: int):
        self.root, self.stop_at_response, self.budget = root, stop_at_response, budget
        self.scopes: list[dict] = [{"$": root}]
        self.out: list[str] = []

    def var(self, name):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateUnsupported(f"undefined variable {name}")

    def field(self, value, names):
        for name in names:
            if name == "Response" and self.stop_at_response and value is self.root:
                raise _Stop()
            if not isinstance(value, dict):
                raise TemplateUnsupported(f"no field {name}")
            if name not in value:
                raise TemplateUnsupported(f"unknown field .{name}")
            value = value[name]
        return value

    def operand(self, toks, dot):
        kind, text = toks.pop(0)
        if kind == "field":
            return dot if text == "." else self.field(dot, text[1:].split("."))
        if kind == "var":
            name, *rest = text.split(".")
            return self.field(self.var(name), rest)
        if kind == "str":
            try:
                return json.loads(text)
            except ValueError:
                raise TemplateUnsupported(f"cannot read the string {text}") from None
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident" and text in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[text]
        if kind == "punct" and text == "(":
            depth, inner = 1, []
            while toks:
                t = toks.pop(0)
                depth += (t == ("punct", "(")) - (t == ("punct", ")"))
                if depth == 0:
                    return self.pipe(inner, dot)
                inner.append(t)
            raise TemplateUnsupported("unclosed (")
        raise TemplateUnsupported(f"unexpected {text!r}")

    def pipe(self, toks, dot):
        toks, result, first = list(toks), None, True
        while True:
            cmd = []
            while toks and toks[0] != ("punct", "|"):
                cmd.append(toks.pop(0))
            result = self.command(cmd, dot, None if first else (result,))
            first = False
            if not toks:
                return result
            toks.pop(0)

    def command(self, cmd, dot, piped):
        if not cmd:
            raise TemplateUnsupported("an empty command")
        if cmd[0][0] == "ident" and cmd[0][1] not in ("true", "false", "nil"):
            name = cmd.pop(0)[1]
            if name in ("and", "or"):  # Go evaluates these lazily, returning the deciding value
                value = None
                groups = self.args(cmd)
                for g in groups + ([None] if piped else []):
                    value = piped[0] if g is None else self.operand(list(g), dot)
                    if truth(value) != (name == "and"):
                        return value
                return value
            fn = FUNCS.get(name)
            if fn is None:
                raise TemplateUnsupported(f"function {name} is not supported")
            args = [self.operand(list(g), dot) for g in self.args(cmd)] + list(piped or ())
            try:
                return fn(*args)
            except TemplateUnsupported:
                raise
            except Exception as exc:  # a Go template would fail at this call too
                raise TemplateUnsupported(f"{name}: {exc}") from None
        value = self.operand(cmd, dot)
        if cmd or piped:
            raise TemplateUnsupported("arguments after a value")
        return value

    def args(self, toks):
        """Split a command's tokens into one token group per operand (a paren group is one)."""
        groups, depth, cur = [], 0, []
        for t in toks:
            cur.append(t)
            depth += (t == ("punct", "(")) - (t == ("punct", ")"))
            if depth == 0:
                groups.append(cur)
                cur = []
        if cur:
            raise TemplateUnsupported("unclosed (")
        return groups

    def write(self, text):
        self.budget -= len(text)
        if self.budget < 0:
            raise TemplateUnsupported("the output is too long")
        self.out.append(text)

    def run(self, nodes, dot):
        for node in nodes:
            kind = node[0]
            if kind == "text":
                self.write(node[1])
            elif kind == "print":
                self.write(show(self.pipe(node[1], dot)))
            elif kind == "set":
                value = self.pipe(node[3], dot)
                if node[2]:
                    self.scopes[-1][node[1]] = value
                else:
                    scope = next((s for s in reversed(self.scopes) if node[1] in s), None)
                    if scope is None:
                        raise TemplateUnsupported(f"undefined variable {node[1]}")
                    scope[node[1]] = value
            elif kind == "break":
                raise _Break()
            elif kind == "continue":
                raise _Continue()
            else:
                self.block(node, dot)

    def block(self, node, dot):
        head, branches, orelse, names = node
        self.scopes.append({})
        try:
            if head == "range":
                seq = self.pipe(branches[0][0], dot)
                if isinstance(seq, dict):
                    seq = [(k, seq[k]) for k in sorted(seq)]
                elif isinstance(seq, (list, tuple)):
                    seq = list(enumerate(seq))
                elif seq is None:
                    seq = []
                else:
                    raise TemplateUnsupported("range over something that is not a list")
                if not seq:
                    self.run(orelse, dot)
                for key, item in seq:
                    self.scopes.append(dict(zip(names, (key, item) if len(names) == 2 else (item,))))
                    try:
                        self.run(branches[0][1], item)
                    except _Continue:
                        pass
                    except _Break:
                        break
                    finally:
                        self.scopes.pop()
                return
            for cond, body in branches:
                value = self.pipe(cond, dot)
                if truth(value):
                    self.run(body, value if head == "with" else dot)
                    return
            self.run(orelse, dot)
        finally:
            self.scopes.pop()


def execute(nodes, values: dict, *, stop_at_response: bool = False, budget: int = 1 << 16) -> str:
    """Run parsed ``nodes`` on ``values``; with ``stop_at_response`` the output ends where
    ``.Response`` is first read (Ollama's cut for the turn being generated)."""
    r = _Run(values, stop_at_response, budget)
    try:
        r.run(nodes, values)
    except _Stop:
        pass
    except (_Break, _Continue):
        raise TemplateUnsupported("break or continue outside range") from None
    except RecursionError:
        raise TemplateUnsupported("nested too deeply") from None
    return "".join(r.out)


def identifiers(src: str) -> set[str]:
    """The top-level field names a template mentions (Ollama's Vars(), lower-cased)."""
    return {m.lower() for m in re.findall(r"(?<![A-Za-z0-9_])\$?\.([A-Za-z_][A-Za-z0-9_]*)", src)}

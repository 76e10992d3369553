"""A strict checker for the custom CSS a tenant puts in its branding: plain CSS, nothing that runs or loads.

Why a checker of our own rather than a sanitiser: the CSS is served as a stylesheet (`{tenant}/branding.css`)
and may be inlined by a tenant's app into a `<style>` element, so anything that closes the element, pulls in
another resource or runs script must be refused at save with the line it is on, and what is accepted is
served unchanged. The checker tokenises the text (in linear time, one pass) and parses the token stream as a
stylesheet: rules of selectors and `property: value;` declarations, and the at-rules that hold only CSS
(`@media`, `@supports`, `@font-face`, `@keyframes`, `@page`, `@layer`, `@container`). Refused:

- any `<` (`</style>`, `<!--`, `<script>`; `>` stays, the child combinator), and backslash escapes (they
  can spell `url(` or `javascript:` in disguise);
- `@import`, `@charset`, `@namespace` and every at-rule not listed above;
- `url(...)` except an `https://` address, `image-set`/`src` of anything else, `expression(`,
  `javascript:`, `vbscript:`, `data:`, `-moz-binding`, `behavior:`;
- unbalanced braces, brackets or parentheses, unterminated strings or comments, declarations without a
  property name or colon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CSS = 65536
BLOCK_AT_RULES = ("media", "supports", "layer", "container", "document")  # hold rules
DECLARATION_AT_RULES = ("font-face", "page")  # hold declarations
KEYFRAMES = ("keyframes", "-webkit-keyframes")
FORBIDDEN_WORDS = ("javascript:", "vbscript:", "data:", "-moz-binding")
FORBIDDEN_PROPERTIES = ("behavior", "-ms-behavior", "-moz-binding")
PROPERTY = re.compile(r"-{0,2}[A-Za-z][A-Za-z0-9_-]*\Z")
HTTPS_URL = re.compile(r"https://[^\s\"'()<>\\]+\Z")


class CssError(ValueError):
    """Why the CSS was refused, and on which line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Token:
    kind: str  # ident, at, string, url, function, number, delim, '{', '}', ';', ':', '(', ')', '[', ']', ','
    text: str
    line: int


def tokens(css: str) -> list[Token]:
    """The tokens of `css` without comments and whitespace; CssError on anything refused at this level."""
    found: list[Token] = []
    i, line, n = 0, 1, len(css)
    while i < n:
        c = css[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "<":
            raise CssError(line, "'<' is not allowed in custom CSS (it could close the style element)")
        elif c == "\\":
            raise CssError(line, "backslash escapes are not allowed in custom CSS")
        elif css.startswith("/*", i):
            end = css.find("*/", i + 2)
            if end < 0:
                raise CssError(line, "a comment is not closed")
            line += css.count("\n", i, end)
            i = end + 2
        elif c in "\"'":
            end = i + 1
            while end < n and css[end] != c:
                if css[end] == "\n":
                    raise CssError(line, "a string is not closed on its line")
                end += 1
            if end >= n:
                raise CssError(line, "a string is not closed")
            found.append(Token("string", css[i + 1:end], line))
            i = end + 1
        elif c == "@":
            match = re.match(r"@-?[A-Za-z][A-Za-z0-9-]*", css[i:i + 100])
            if not match:
                raise CssError(line, "'@' must start an at-rule")
            found.append(Token("at", match.group()[1:].lower(), line))
            i += len(match.group())
        elif c.isalpha() or c in "-_" or (c == "#" and i + 1 < n and (css[i + 1].isalnum() or css[i + 1] in "-_")):
            start = i
            i += 1
            while i < n and (css[i].isalnum() or css[i] in "-_"):
                i += 1
            word = css[start:i]
            if i < n and css[i] == "(":
                found.append(Token("function", word.lower(), line))
                i += 1
                if word.lower() == "url":
                    i, line = _url(css, i, line, found)
            else:
                found.append(Token("ident", word, line))
        elif c.isdigit() or (c == "." and i + 1 < n and css[i + 1].isdigit()):
            start = i
            while i < n and (css[i].isalnum() or css[i] in ".%"):
                i += 1
            found.append(Token("number", css[start:i], line))
        elif c in "{};:()[],":
            found.append(Token(c, c, line))
            i += 1
        elif c in "*>+~.#=|^$!/%&?":
            found.append(Token("delim", c, line))
            i += 1
        else:
            raise CssError(line, f"unexpected character {c!r}")
    return found


def _url(css: str, i: int, line: int, found: list[Token]) -> tuple[int, int]:
    """`url(` has been read: the address (quoted or not) up to its `)`, which must be an https URL."""
    end = css.find(")", i)
    if end < 0:
        raise CssError(line, "url( is not closed")
    address = css[i:end].strip()
    if address[:1] in ("'", '"') and address[-1:] == address[:1] and len(address) >= 2:
        address = address[1:-1]
    if not HTTPS_URL.match(address):
        raise CssError(line, "url() may hold an https:// address only")
    found.append(Token("url", address, line))
    found.append(Token(")", ")", line))
    return end + 1, line + css.count("\n", i, end)


class Parser:
    def __init__(self, items: list[Token]) -> None:
        self.items, self.at = items, 0

    def peek(self) -> Token | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def next(self) -> Token:
        token = self.items[self.at]
        self.at += 1
        return token

    def stylesheet(self, nested: bool) -> None:
        """Rules until the end (or, nested, until the `}` that closes the block, which is consumed)."""
        while (token := self.peek()) is not None:
            if token.kind == "}":
                if not nested:
                    raise CssError(token.line, "'}' closes nothing")
                self.next()
                return
            if token.kind == "at":
                self.at_rule(self.next())
            else:
                self.prelude(token.line)
                self.declarations()
        if nested:
            raise CssError(self.items[-1].line if self.items else 1, "a block is not closed with '}'")

    def prelude(self, line: int, *, allow_empty: bool = False) -> None:
        """A selector or an at-rule's condition, up to its `{` (consumed); brackets balanced."""
        depth, seen = [], False
        while (token := self.peek()) is not None:
            if token.kind == "{" and not depth:
                if not seen and not allow_empty:
                    raise CssError(token.line, "a rule needs a selector before '{'")
                self.next()
                return
            if token.kind in (";", "}") and not depth:
                raise CssError(token.line, f"'{token.text}' where a selector or a '{{' was expected")
            self.balance(self.next(), depth)
            seen = True
        raise CssError(line, "a rule has no '{' block")

    def balance(self, token: Token, depth: list[str]) -> None:
        closing = {"(": ")", "[": "]", "function": ")"}
        if token.kind == "function" and token.text in ("expression", "image", "element", "-moz-element"):
            raise CssError(token.line, f"{token.text}() is not allowed in custom CSS")
        if token.kind in closing:
            depth.append(closing[token.kind])
        elif token.kind in (")", "]"):
            if not depth or depth.pop() != token.kind:
                raise CssError(token.line, f"'{token.kind}' does not close anything")
        elif token.kind == "at":
            raise CssError(token.line, f"@{token.text} is not allowed here")
        if token.kind in ("ident", "string", "function") and any(w in token.text.lower() for w in FORBIDDEN_WORDS):
            raise CssError(token.line, f"'{token.text}' is not allowed in custom CSS")

    def declarations(self) -> None:
        """`property: value;` pairs until the `}` that closes the block (consumed)."""
        while (token := self.peek()) is not None:
            if token.kind == "}":
                self.next()
                return
            if token.kind == ";":
                self.next()
                continue
            name = self.next()
            if name.kind != "ident" or not PROPERTY.match(name.text):
                raise CssError(name.line, f"'{name.text}' where a property name was expected")
            if name.text.lower() in FORBIDDEN_PROPERTIES:
                raise CssError(name.line, f"the property '{name.text}' is not allowed")
            colon = self.peek()
            if colon is None or colon.kind != ":":
                raise CssError(name.line, f"the property '{name.text}' has no ':'")
            self.next()
            depth: list[str] = []
            while (token := self.peek()) is not None:
                if not depth and token.kind in (";", "}"):
                    break
                if token.kind == "{":
                    raise CssError(token.line, f"'{{' inside the value of '{name.text}'")
                self.balance(self.next(), depth)
            if depth:
                raise CssError(name.line, f"the value of '{name.text}' leaves a bracket open")
        raise CssError(self.items[-1].line if self.items else 1, "a block is not closed with '}'")

    def at_rule(self, token: Token) -> None:
        name = token.text
        if name in BLOCK_AT_RULES:
            self.prelude(token.line, allow_empty=name == "layer")
            self.stylesheet(nested=True)
        elif name in DECLARATION_AT_RULES:
            self.prelude(token.line, allow_empty=True)
            self.declarations()
        elif name in KEYFRAMES:
            self.prelude(token.line)
            while (inner := self.peek()) is not None and inner.kind != "}":
                self.prelude(inner.line)
                self.declarations()
            if self.peek() is None:
                raise CssError(token.line, f"@{name} is not closed with '}}'")
            self.next()
        else:
            raise CssError(token.line, f"@{name} is not allowed in custom CSS")


def check_css(css: str) -> None:
    """Raise CssError (with the line) unless `css` is a stylesheet of plain rules, as the module says."""
    if len(css) > MAX_CSS:
        raise CssError(1, f"custom CSS is longer than {MAX_CSS} characters")
    Parser(tokens(css)).stylesheet(nested=False)

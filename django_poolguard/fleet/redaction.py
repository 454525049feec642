"""Secrets out of session SQL before any page, terminal or pipe shows it.

A list of secret-bearing forms (``PASSWORD '...'``, ``password=...``) always misses the next one:
``E'...'``, ``$$...$$``, a comment between keyword and literal. So the rule is lexical instead: a
statement that mentions a password, a connection string or a password hash has **every** literal
masked (``'***'``), whatever its quoting, and so has the SQL inside its comments. Independently,
credentials that are not literals (``scheme://user:pw@``, ``password=pw`` in a comment, a Django
hash) are masked wherever they appear. A literal whose end cannot be known (cut by PostgreSQL's
``track_activity_query_size``, or a backslash that a ``standard_conforming_strings = off`` session
would read as an escape) is masked to the end of the text.

Statements that mention none of these keep their literals: they are data the staff reading them
could query themselves. Text is redacted first and only then cut to length, so a cut can never
leave the beginning of a secret behind.

Everything here is linear in the length of the text (no backtracking regular expression, no
recursion): the input is whatever any database user sent.
"""

from __future__ import annotations

import re

MASK = "'***'"

# A statement containing one of these (in any case, anywhere: code, identifier, literal or comment)
# has all its literals masked. Over-matching only hides data; a substring test keeps the common
# case (no keyword) at one pass over the text.
SENSITIVE_WORDS = (
    "passw",  # password, passwd, sslpassword
    "passphrase",
    "pwd",
    "secret",
    "token",
    "credential",
    "api_key",
    "apikey",
    "private_key",
    "dblink",
    "mapping",  # CREATE USER MAPPING ... OPTIONS (password '...')
    "conninfo",
    "connection",  # CREATE SUBSCRIPTION ... CONNECTION '...'
    "subscription",
    "pgp_sym",
    "pgp_pub",
    "crypt",  # pgcrypto's crypt(), bcrypt$, scrypt$, crypt$ hashes
    "hmac",
    "://",
    "md5",  # Django's md5$ and unsalted_md5$, PostgreSQL's md5<hex>
    "sha1",
    "pbkdf2",
    "argon2",
    "scram-sha-256",
)
# Django's hasher names (legacy ones included) and PostgreSQL's SCRAM, at the start of a word.
# Each pattern starts with a lookahead on its first character: re then skips most positions at once.
_HASH = (
    r"(?=[pabsmucPABSMUC])(?:(?<![\w-])(?:pbkdf2_sha256|pbkdf2_sha1|argon2|bcrypt_sha256|bcrypt|scrypt"
    r"|sha1|md5|unsalted_md5|unsalted_sha1|crypt|scram-sha-256)\$[^\s'\",;)]*|(?<![\w$])md5[0-9a-f]{32})"
)
# Credentials outside literals: in comments, in code, in text cut before its closing quote.
# The password of a URI cut before its "@" (the server keeps only track_activity_query_size) runs
# to the end of the text: masked too.
_URI_PASSWORD = re.compile(r"(://[^\s/@:'\"]{0,256}:)[^\s@'\"]{0,256}(@|$)")
_KEY_VALUE = re.compile(
    r"(?=[psPS])((?:passw(?:or)?d|passphrase|pwd|secret)\s*(?:=|:(?!:))\s*)(?!\$\d)"
    r"(?:'[^']*'?|\"[^\"]*\"?|[^\s,;)&'\"]+)",
    re.IGNORECASE,
)
_HASH_VALUE = re.compile(_HASH, re.IGNORECASE)

# Where something other than plain code may begin.
_START = re.compile(r"""['"$]|--|/\*|[eEnNbBxX](?=')|[uU](?=&['"])""")
_IDENTIFIER_CHAR = re.compile(r"[\w$\x80-\U0010ffff]")
_DOLLAR_TAG = re.compile(r"\$(?:(?:[^\W\d]|[\x80-\U0010ffff])[\w\x80-\U0010ffff]*)?\$")
_QUOTE_OR_BACKSLASH = re.compile(r"['\\]")
_NEWLINE = re.compile(r"[\r\n]")
_COMMENT_DELIMITER = re.compile(r"/\*|\*/")


def redact_sql(query: str | None, max_chars: int | None = None) -> str:
    """``query`` with its secrets masked, then cut to ``max_chars`` (never the other way round)."""
    if not query:
        return ""
    lowered = query.lower()
    if any(word in lowered for word in SENSITIVE_WORDS):
        query = _mask_credentials(_mask_literals(query, comments=True))
    return query if max_chars is None else query[:max_chars]


def _mask_credentials(text: str) -> str:
    text = _URI_PASSWORD.sub(r"\1***\2", text)
    text = _KEY_VALUE.sub(_hide_value, text)
    return _HASH_VALUE.sub("***", text)


def _hide_value(match: re.Match[str]) -> str:
    quoted = match.group(0)[len(match.group(1)) :].startswith(("'", '"'))
    return match.group(1) + (MASK if quoted else "***")


def _mask_literals(text: str, *, comments: bool) -> str:
    """Every literal of ``text`` replaced by ``'***'``; with ``comments``, the SQL inside comments
    masked the same way (one level: comment bodies are scanned without comments, so nesting cannot
    recurse)."""
    out: list[str] = []
    position = 0  # text before this is in ``out``
    index = 0
    while True:
        match = _START.search(text, index)
        if match is None:
            break
        start = match.start()
        token = match.group()
        end: int | None  # None: the literal never closes
        if token in ("--", "/*"):
            if not comments:
                index = start + 2
                continue
            end, body_end = _comment_end(text, start)
            out.append(text[position : start + 2])
            out.append(_mask_literals(text[start + 2 : body_end], comments=False))
            out.append(text[body_end:end])
            position = index = end
            continue
        if token == "'":
            end = _standard_end(text, start + 1)
        elif token == '"':
            end = _quoted_end(text, start + 1, '"')
            if end is not None:
                index = end  # identifiers stay: they name things, they hold no data
                continue
        elif _follows_identifier(text, start):
            index = start + 1  # "$" or a letter inside a word: not the start of a literal
            continue
        elif token == "$":
            tag = _DOLLAR_TAG.match(text, start)
            if tag is None:
                index = start + 1
                continue
            close = text.find(tag.group(), tag.end())
            end = None if close < 0 else close + len(tag.group())
        elif token in "uU" and text[start + 2] == '"':
            index = start + 2  # U&"...": an identifier, scanned from its quote
            continue
        elif token in "uU":
            end = _quoted_end(text, start + 3, "'")  # U&'...': no backslash escapes of the quote
        elif token in "eE":
            end = _escape_end(text, start + 2)
        else:  # N'...', B'...', X'...'
            end = _standard_end(text, start + 2)
        out.append(text[position:start])
        if end is None:  # an open literal (or identifier) hides everything after it
            out.append(MASK[:-1])
            position = index = len(text)
            break
        out.append(MASK)
        position = index = end
    out.append(text[position:])
    return "".join(out)


def _follows_identifier(text: str, index: int) -> bool:
    return index > 0 and _IDENTIFIER_CHAR.match(text, index - 1) is not None


def _comment_end(text: str, start: int) -> tuple[int, int]:
    """(end of the comment, end of its body) for the comment at ``start``; nested ``/* */`` count."""
    if text.startswith("--", start):
        newline = _NEWLINE.search(text, start)
        end = len(text) if newline is None else newline.start()
        return end, end
    depth = 1
    index = start + 2
    while True:
        match = _COMMENT_DELIMITER.search(text, index)
        if match is None:
            return len(text), len(text)
        depth += 1 if match.group() == "/*" else -1
        index = match.end()
        if depth == 0:
            return index, match.start()


def _quoted_end(text: str, index: int, quote: str) -> int | None:
    """The end of a quoted token whose body starts at ``index``; a doubled quote continues it."""
    while True:
        close = text.find(quote, index)
        if close < 0:
            return None
        if text.startswith(quote, close + 1):
            index = close + 2
            continue
        return close + 1


def _standard_end(text: str, index: int) -> int | None:
    """The end of a '...' literal; ``None`` when a backslash makes it ambiguous.

    With ``standard_conforming_strings = off`` (a per-session setting) a backslash escapes the
    quote after it, so such a literal may end later than it seems to here.
    """
    while True:
        match = _QUOTE_OR_BACKSLASH.search(text, index)
        if match is None or match.group() == "\\":
            return None
        close = match.start()
        if text.startswith("'", close + 1):
            index = close + 2
            continue
        return close + 1


def _escape_end(text: str, index: int) -> int | None:
    """The end of an E'...' literal: a backslash escapes any character, '' is a quote."""
    while True:
        match = _QUOTE_OR_BACKSLASH.search(text, index)
        if match is None:
            return None
        if match.group() == "\\":
            index = match.end() + 1
            continue
        close = match.start()
        if text.startswith("'", close + 1):
            index = close + 2
            continue
        return close + 1


__all__ = ["redact_sql"]

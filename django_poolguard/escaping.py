"""Text from outside (session SQL and user names from ``pg_stat_activity``, request paths, task ids,
thread names) made safe for a terminal and for a log line.

Control characters are shown, not obeyed: an ESC sequence in a session's SQL could otherwise clear
the on-call engineer's screen or retitle their terminal, and a CR/LF in a request path would forge a
log line of its own. Backslashes are left alone, so escaping twice changes nothing.
"""

from __future__ import annotations

import re

# C0, DEL, C1; the Unicode line and paragraph separators some log viewers split on; and the
# bidirectional controls that can make a terminal display text in another order than it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with its control characters written as ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or ``\\uNNNN``."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


__all__ = ["escape_controls"]

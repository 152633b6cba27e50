"""Client-controlled text on its way into a log line."""


def printable(raw: bytes, limit: int = 300) -> str:
    """
    C{raw} (a file name, a path, a user agent) as log text: bounded to
    C{limit} bytes, undecodable bytes and control characters (newlines
    included, so nobody can forge a log line) written as C{\\xNN}.
    """
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)

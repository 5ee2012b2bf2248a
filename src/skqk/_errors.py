"""The one-line error idiom: every message a user can cause is printed as ``skqk: error: <one line>``."""


def one_line(message: object, limit: int = 0) -> str:
    """`message` (an exception or text) with all its whitespace runs, newlines included, made single spaces; cut to
    `limit` characters with an ellipsis when `limit` is positive."""
    text = " ".join(str(message).split())
    return text if limit <= 0 or len(text) <= limit else text[: limit - 1] + "…"

"""Remove secrets from text before it is staged or uploaded.

Launcher configs and logs can hold API keys: values of secret-looking keys (YAML, JSON,
KEY=VALUE) and token-shaped strings are replaced, line by line, so large logs stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***REDACTED***"

SECRET_WORDS = {
    "token", "secret", "secrets", "password", "passwd", "pwd", "credential", "credentials",
    "authorization", "apikey", "api-key", "private",
}

TOKEN_PATTERNS = [
    r"\bhf_[A-Za-z0-9]{16,}",  # Hugging Face
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI-style
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub
    r"\bnvapi-[A-Za-z0-9_-]{16,}",  # NVIDIA API catalog
    r"\bxox[abp]-[A-Za-z0-9-]{10,}",  # Slack
    r"\b(?:[a-z]+-)?(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])",  # W&B API keys
    r"(?<=(?i:bearer) )[A-Za-z0-9._~+/=-]{8,}",
]

# `key: value`, `"key": "value"`, `KEY=value`
ASSIGNMENT = re.compile(
    r"""(?P<key>[A-Za-z_][\w.-]*)(?P<quote>["']?)(?P<sep>[ \t]*[:=][ \t]*)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,{}\[\]]+)"""
)
# `--api-key value`, `--token=value`
FLAG = re.compile(r"(?P<key>--[A-Za-z][\w.-]*)(?P<quote>)(?P<sep>[ \t]+|=)(?P<value>[^\s\"']+)")


def is_secret_name(name: str) -> bool:
    """`*_KEY`, `api_key`, anything with token/secret/password as a word of the name.

    `max_tokens` or `api_key_name` are not secrets: only whole words count, and `key` only as
    the last word.
    """
    parts = [p for p in re.split(r"[_.\-]+", name.lower()) if p]
    if not parts:
        return False
    return parts[-1] == "key" or any(p in SECRET_WORDS for p in parts)


class Redactor:
    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        for pattern in extra_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"redact pattern {pattern!r} is not a valid regex: {err}") \
                    from None
        self.tokens = re.compile("|".join(f"(?:{p})" for p in [*TOKEN_PATTERNS, *extra_patterns]))

    @staticmethod
    def _mask(match: re.Match[str]) -> str:
        value = match["value"]
        if not is_secret_name(match["key"]) or MASK in value:
            return match[0]
        quote = value[0] if value[:1] in "\"'" and len(value) > 1 else ""
        return f"{match['key']}{match['quote']}{match['sep']}{quote}{MASK}{quote}"

    def line(self, text: str) -> str:
        text = self.tokens.sub(MASK, text)
        text = FLAG.sub(self._mask, text)
        return ASSIGNMENT.sub(self._mask, text)

    def text(self, text: str) -> str:
        return "".join(self.line(line) for line in text.splitlines(keepends=True))

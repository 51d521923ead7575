"""The deterministic 'model': extractive summaries, token counts, schema filling.

Same input, same output, always: tests can assert exact completions.
"""

import re
from collections import Counter
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]{3,}")
_STOP = frozenset(
    (
        "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her",
        "was", "one", "our", "out", "has", "him", "his", "how", "its", "may", "new", "now",
        "old", "see", "two", "way", "who", "did", "get", "let", "say", "she", "too", "use",
        "that", "with", "have", "this", "will", "your", "from", "they", "been", "more", "when",
        "were", "what", "there", "their", "which", "would", "about", "into", "than", "then",
        "them", "these",
    )
)  # fmt: skip
MAX_SENTENCES = 3


def count_tokens(text: str) -> int:
    """Words and punctuation marks: a stable stand-in for a BPE count."""
    return len(_TOKEN.findall(text))


def truncate_tokens(text: str, limit: int) -> tuple[str, bool]:
    """Cut text after ``limit`` tokens; True if anything was cut."""
    matches = list(_TOKEN.finditer(text))
    if len(matches) <= limit:
        return text, False
    return text[: matches[limit - 1].end()] if limit > 0 else "", True


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def summarize(text: str, max_sentences: int = MAX_SENTENCES) -> str:
    """Pick the highest-scoring sentences (word frequency), in original order."""
    parts = sentences(text)
    if len(parts) <= max_sentences:
        return " ".join(parts)
    freq = Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP)

    def score(item: tuple[int, str]) -> tuple[float, int]:
        words = [w for w in _WORD.findall(item[1].lower()) if w not in _STOP]
        value = sum(freq[w] for w in words) / (len(words) ** 0.5) if words else 0.0
        return (-value, item[0])

    chosen = sorted(sorted(enumerate(parts), key=score)[:max_sentences])
    return " ".join(s for _, s in chosen)


class SchemaFiller:
    """Build a JSON value that satisfies a simple JSON Schema, from one text."""

    def __init__(self, text: str, root: dict[str, Any]) -> None:
        self.text = text
        self.summary = summarize(text) or text.strip()
        self.parts = sentences(self.summary) or [self.summary]
        self.words = len(_WORD.findall(text))
        self.root = root

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            return node if isinstance(node, dict) else {}
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options and isinstance(options[0], dict):
                return self._resolve(options[0])
        return schema

    def fill(self, schema: dict[str, Any]) -> Any:
        schema = self._resolve(schema)
        if schema.get("enum"):
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        filler = getattr(self, f"_fill_{kind}", None)
        return filler(schema) if filler else None

    def _fill_object(self, schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties", {})
        return {name: self.fill(sub) for name, sub in props.items() if isinstance(sub, dict)}

    def _fill_string(self, schema: dict[str, Any]) -> str:
        value = self.summary
        limit = schema.get("maxLength")
        return value[:limit] if isinstance(limit, int) else value

    def _bounded(self, schema: dict[str, Any], value: float) -> float:
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, int | float):
            value = max(value, low)
        if isinstance(high, int | float):
            value = min(value, high)
        return value

    def _fill_integer(self, schema: dict[str, Any]) -> int:
        return int(self._bounded(schema, self.words))

    def _fill_number(self, schema: dict[str, Any]) -> float:
        return float(self._bounded(schema, self.words))

    def _fill_boolean(self, _schema: dict[str, Any]) -> bool:
        return self.words > 0

    def _fill_null(self, _schema: dict[str, Any]) -> None:
        return None

    def _fill_array(self, schema: dict[str, Any]) -> list[Any]:
        items = schema.get("items", {"type": "string"})
        items = self._resolve(items if isinstance(items, dict) else {"type": "string"})
        low = schema.get("minItems", 1)
        high = schema.get("maxItems", max(low, len(self.parts)))
        count = max(low, min(high, len(self.parts)))
        if items.get("type", "string") == "string" and "enum" not in items:
            return [self.parts[i % len(self.parts)] for i in range(count)]
        return [self.fill(items) for _ in range(count)]

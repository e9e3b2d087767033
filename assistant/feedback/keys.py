"""Keys over prompts and rows: equivalence, the stable train/holdout split, content ids, near-duplicates.

Two prompts are *equivalent* when the conversation the user typed (system messages aside: they hold the
instructions and retrieved context, which change with the index) is the same after normalizing case,
Unicode forms, punctuation and spacing. The split hashes that key, so equivalent prompts always land on the
same side. *Near-duplicates* are looser: prompts whose word sets overlap by at least a threshold (Jaccard),
found with MinHash so that thousands of rows cost milliseconds, not a pairwise comparison.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def key_text(messages: list[dict[str, str]]) -> str:
    """The normalized conversation a prompt key is made of: every non-system message, role included."""
    return "\n".join(
        f"{m['role']}: {' '.join(words(m['content']))}" for m in messages if m["role"] != "system"
    )


def prompt_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(key_text(messages).encode("utf-8")).hexdigest()[:32]


def split_of(key: str, holdout_fraction: float) -> str:
    """'holdout' for a stable ~`holdout_fraction` of prompt keys, else 'train' (the same answer forever)."""
    bucket = int(hashlib.sha256(f"split:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    return "holdout" if bucket < holdout_fraction else "train"


def row_id(kind: str, row: dict[str, Any]) -> str:
    """A stable id from a row's content: the same row always has the same id, wherever it came from."""
    content = {k: v for k, v in row.items() if k != "id"}
    digest = hashlib.sha256(
        json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    return f"{kind}-{digest[:20]}"


# ---- near-duplicates ----
_HASHES, _BANDS = 64, 16  # 16 bands of 4: pairs at Jaccard 0.8 meet in a bucket with p > 0.999
_rng = np.random.default_rng(20240611)
_A = _rng.integers(1, 2**63, size=_HASHES, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63, size=_HASHES, dtype=np.uint64)


def _signature(tokens: set[str]) -> np.ndarray:
    h = np.array(
        [
            int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
            for t in tokens
        ],
        dtype=np.uint64,
    )
    return (h[None, :] * _A[:, None] + _B[:, None]).min(axis=1)  # wraps mod 2**64: a universal hash family


def near_duplicate_groups(texts: list[str], threshold: float) -> list[int]:
    """A group number per text; texts whose word sets have Jaccard similarity >= `threshold` share one.

    Groups are closed transitively (a ~ b and b ~ c put a, b and c together). Texts without words are
    never grouped with others.
    """
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sets = [set(words(t)) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = {}
    rows = _HASHES // _BANDS
    for i, tokens in enumerate(sets):
        if not tokens:
            continue
        sig = _signature(tokens)
        for band in range(_BANDS):
            buckets.setdefault((band, sig[band * rows : (band + 1) * rows].tobytes()), []).append(i)
    for members in buckets.values():
        for n, j in enumerate(members[1:], start=1):
            for i in members[:n]:
                if find(i) == find(j):
                    break
                if len(sets[i] & sets[j]) >= threshold * len(sets[i] | sets[j]):
                    parent[find(j)] = find(i)
                    break
    return [find(i) for i in range(len(texts))]

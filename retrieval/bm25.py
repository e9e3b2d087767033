"""BM25: rank-bm25's Okapi scoring, precomputed into bm25s's sparse index so a query costs milliseconds.

rank-bm25 (`BM25Okapi`) is the reference: IDF log((N - df + 0.5) / (df + 0.5)), negative IDFs replaced by
epsilon * mean IDF, term frequency saturation tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)). It
scores every document in Python per query term; here each (term, chunk) score is computed once, vectorized,
at build time, and bm25s sums the postings of the query's terms. A saved index is searched (numpy backend)
by `SavedScores`, which reads bm25s's files and sums them as bm25s does, without importing bm25s.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

TOKEN = re.compile(r"\w+")
EXTRA_FILE = "okapi.json"


@cache
def _stopwords() -> frozenset[str]:
    """bm25s's English stopwords, read from its stopwords module without importing the bm25s package (which
    imports numba and scipy: a third of a cold `nightjar search`)."""
    import importlib.util
    import sys

    if "bm25s" in sys.modules:
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    package = importlib.util.find_spec("bm25s")
    path = Path(next(iter(package.submodule_search_locations))) / "stopwords.py"
    spec = importlib.util.spec_from_file_location("_nightjar_bm25s_stopwords", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(module.STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and identifiers (ERR_0x7F3A stays one token), English stopwords left out."""
    stop = _stopwords()
    return [t for t in TOKEN.findall(text.lower()) if t not in stop]


class BM25Index:
    """Okapi BM25 over chunks; row i of the index is chunk `ids[i]`."""

    def __init__(self, retriever, ids: np.ndarray, idf: np.ndarray, k1: float, b: float) -> None:
        self.retriever = retriever  # a bm25s.BM25 holding the precomputed scores
        self.ids = ids
        self.idf = idf
        self.k1, self.b = k1, b

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        chunks: Iterable[tuple[int, str]],
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        backend: str = "numpy",
    ) -> BM25Index:
        """Index (chunk id, text) pairs; texts are read once and only their token ids are kept."""
        import bm25s
        import scipy.sparse as sp

        vocab: dict[str, int] = {}
        ids, tokens, sizes = array("q"), array("i"), array("q")
        for chunk_id, text in chunks:
            start = len(tokens)
            tokens.extend([vocab.setdefault(t, len(vocab)) for t in tokenize(text)])
            ids.append(chunk_id)
            sizes.append(len(tokens) - start)
        cols = np.frombuffer(tokens, dtype=np.int32) if tokens else np.zeros(0, dtype=np.int32)
        lengths = np.frombuffer(sizes, dtype=np.int64) if sizes else np.zeros(0, dtype=np.int64)
        n, v = len(lengths), len(vocab)
        rows = np.repeat(np.arange(n, dtype=np.int32), lengths)
        tf = sp.csc_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(n, v))
        del rows, cols, tokens
        tf.sum_duplicates()  # column t holds (chunk, frequency of t in it)
        df = np.diff(tf.indptr)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        if v:
            idf[idf < 0] = epsilon * idf.mean()
        avgdl = max(float(lengths.mean()) if n else 1.0, 1e-9)
        # score = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)), in place, in float32: a
        # collection of 100k chunks has ~20M (term, chunk) pairs, and float64 temporaries would cost GBs
        freq = tf.data
        norm = lengths.astype(np.float32)[tf.indices]
        norm *= k1 * b / avgdl
        norm += k1 * (1 - b)
        norm += freq
        data = freq * np.float32(k1 + 1)
        data /= norm
        del norm
        data *= np.repeat(idf.astype(np.float32), df)

        retriever = bm25s.BM25(k1=k1, b=b, method="robertson", backend=backend)
        retriever.scores = {
            "data": data,
            "indices": tf.indices.astype(np.int32, copy=False),
            "indptr": tf.indptr.astype(np.int64),
            "num_docs": n,
        }
        retriever.vocab_dict = vocab
        retriever.unique_token_ids_set = set(vocab.values())
        retriever.nonoccurrence_array = None
        return cls(retriever, np.array(ids, dtype=np.int64), idf.astype(np.float32), k1, b)

    def query_ids(self, query: str) -> list[int]:
        vocab = self.retriever.vocab_dict
        return [vocab[t] for t in tokenize(query) if t in vocab]

    def score_all(self, query: str) -> np.ndarray:
        """The BM25 score of every chunk (row order) for `query`; repeated query words count again."""
        ids = self.query_ids(query)
        if not ids or not len(self.ids):
            return np.zeros(len(self.ids), dtype=np.float32)
        return self.retriever.get_scores_from_ids(ids)

    def max_score(self, query: str) -> float:
        """What a chunk matching every query word once, at average length, would score; words the
        collection has never seen count as the rarest possible. Scores divided by this give the share of the
        query's information a chunk matches (its keyword coverage)."""
        n = len(self.ids)
        vocab = self.retriever.vocab_dict
        unseen = float(np.log(n + 0.5) - np.log(0.5))
        return float(sum(self.idf[vocab[t]] if t in vocab else unseen for t in tokenize(query)))

    # ---- persistence: a folder written by bm25s, plus our chunk ids and IDFs ----
    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), corpus=None, show_progress=False)
        np.save(folder / "chunk_ids.npy", self.ids)
        np.save(folder / "idf.npy", self.idf)
        (folder / EXTRA_FILE).write_text(json.dumps({"k1": self.k1, "b": self.b}))

    @classmethod
    def load(cls, folder: Path, backend: str = "numpy") -> BM25Index:
        extra = json.loads((folder / EXTRA_FILE).read_text())
        if backend == "numpy":  # searching needs no bm25s: its files and its numpy scoring, below
            retriever = SavedScores(folder)
        else:
            import bm25s

            retriever = bm25s.BM25.load(str(folder), mmap=False, show_progress=False, backend=backend)
            retriever.nonoccurrence_array = None
        ids = np.load(folder / "chunk_ids.npy")
        idf = np.load(folder / "idf.npy")
        return cls(retriever, ids, idf, extra["k1"], extra["b"])


class SavedScores:
    """A BM25 index saved by bm25s, scored as bm25s's numpy backend scores it (the same additions in the same
    order: the same float32 scores) without importing bm25s, which imports numba and scipy: a cold
    `nightjar search` would spend a third of its time on them."""

    def __init__(self, folder: Path) -> None:
        params = json.loads((folder / "params.index.json").read_text(encoding="utf-8"))
        if params.get("method") != "robertson":
            raise ValueError(f"unexpected BM25 method {params.get('method')} in {folder}")
        self.vocab_dict = json.loads((folder / "vocab.index.json").read_text(encoding="utf-8"))
        self.data = np.load(folder / "data.csc.index.npy")
        self.indices = np.load(folder / "indices.csc.index.npy")
        self.indptr = np.load(folder / "indptr.csc.index.npy")
        self.num_docs = int(params["num_docs"])
        self.dtype = np.dtype(params.get("dtype", "float32"))
        self.int_dtype = np.dtype(params.get("int_dtype", "int32"))

    def get_scores_from_ids(self, query_tokens_ids: list[int]) -> np.ndarray:
        ids = np.asarray(query_tokens_ids, dtype=self.int_dtype)
        scores = np.zeros(self.num_docs, dtype=self.dtype)
        for start, end in zip(self.indptr[ids], self.indptr[ids + 1], strict=True):
            np.add.at(scores, self.indices[start:end], self.data[start:end])
        return scores

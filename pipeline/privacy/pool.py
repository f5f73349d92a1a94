"""Free-text analysis spread over worker processes, each with its own analyzer."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType

from pipeline.errors import InvalidInputError
from pipeline.privacy.analyzer import build_analyzer
from pipeline.privacy.text import Span, find_entities_batch

__all__ = ["TextAnalyzerPool"]


class _Worker:
    spacy_model: str | None = None
    languages: tuple[str, ...] = ("en", "zh")


def _init_worker(spacy_model: str | None, languages: tuple[str, ...]) -> None:
    _Worker.spacy_model, _Worker.languages = spacy_model, languages
    build_analyzer(spacy_model, languages)  # once per process, before the first batch


def _analyze_batch(texts: list[str], language: str) -> tuple[list[list[Span]], float]:
    started = time.perf_counter()
    analyzer = build_analyzer(_Worker.spacy_model, _Worker.languages)
    spans = find_entities_batch(texts, analyzer, language)
    return spans, time.perf_counter() - started


class TextAnalyzerPool:
    """`workers` processes analysing texts in batches of `batch_size`.

    Processes are spawned, not forked: the parent may run Ray or Redis threads, which a
    fork would copy in a broken state. Each worker builds its analyzer once, so create one
    pool per job and reuse it. `batch_seconds` holds each batch's analysis time of the last call.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        spacy_model: str | None = None,
        languages: tuple[str, ...] = ("en", "zh"),
        batch_size: int = 200,
    ):
        if workers < 1:
            raise InvalidInputError("workers", f"must be at least 1, got {workers}")
        if batch_size < 1:
            raise InvalidInputError("batch_size", f"must be at least 1, got {batch_size}")
        self.workers = workers
        self.languages = languages
        self.batch_size = batch_size
        self.batch_seconds: list[float] = []
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(spacy_model, languages),
        )

    def warm_up(self) -> None:
        """Wait until every worker has built its analyzer."""
        list(self._executor.map(_analyze_batch, [[""]] * self.workers, ["en"] * self.workers))

    def find_entities(self, texts: Sequence[str], language: str = "en") -> list[list[Span]]:
        """find_entities for each text, in order."""
        batches = [
            list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        results = list(self._executor.map(_analyze_batch, batches, [language] * len(batches)))
        self.batch_seconds = [seconds for _, seconds in results]
        return [spans for batch, _ in results for spans in batch]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TextAnalyzerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

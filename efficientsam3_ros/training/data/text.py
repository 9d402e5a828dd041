"""Prompt list reader for text-encoder distillation: one noun phrase per line.

Blank lines and lines starting with ``#`` are skipped; phrases are whitespace-normalised
and checked like concepts at inference (``validate_phrase``), and a bad one is counted
and skipped. A missing prompt file is fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...modeling.tokenizer import validate_phrase
from .common import BadRecords, DataError, RecordDataset


class PromptDataset(RecordDataset):
    name = "prompts"

    def __init__(self, path: str | Path, limit: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"prompt file {path} does not exist; set data.prompts")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        bad = BadRecords(self.name)
        records = []
        for line in lines:
            try:
                records.append(validate_phrase(line))
            except ValueError as err:
                bad.add(str(err).split(":")[0], line[:40])
        super().__init__(records, bad, len(lines), limit)

    def load(self, record: Any, rng: np.random.Generator) -> dict[str, Any]:
        return {"key": record, "phrase": record}

"""The local executor of a :class:`~mlquant.study.Study` (private).

For each quant spec (baselines first): skip the cells whose Parquet file exists with the same signature; for the
rest, send each chunk of items' requests through a :class:`~mlquant.cache.CachedModel` (the model is loaded and
quantized only on the first cache miss), score the items, and write the cell atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlquant.cache import CachedModel, RequestCache
from mlquant.errors import MlquantError
from mlquant.quantize import QuantSpec, quantize
from mlquant.results import cell_path, write_cell, write_quant_report

if TYPE_CHECKING:
    from mlquant.study import Cell, RunStats, Study

log = logging.getLogger(__name__)


class Runner:
    """Runs the cells of one study into one run directory."""

    def __init__(self, study: Study, root: Path, *, progress: bool, chunk_items: int) -> None:
        from mlquant.study import RunStats

        self.study = study
        self.root = root
        self.progress = progress
        self.chunk_items = chunk_items
        self.cache = RequestCache(root / "cache.sqlite")
        self.stats: RunStats = RunStats(cells_total=len(study.cells))
        self._base: Any = None
        self._built: list[Any] = []
        self._source: Any = None
        self._seen: dict[int, int] = {}  # forward passes already counted, per model object

    # ----- models -------------------------------------------------------------------------------------------------
    def _model_source(self) -> Any:
        from mlquant._loading import resolve_source

        if self._source is None:
            self._source = resolve_source(self.study.model)
        return self._source

    def _base_model(self) -> Any:
        if self._base is None:
            if isinstance(self.study.model, str):
                from mlquant.models import HFModel, load_model

                self._base = load_model(self.study.model, batch_size=self.study.batch_size)
                assert isinstance(self._base, HFModel)
            else:
                self._base = self.study.model
                self._seen[id(self._base)] = int(getattr(self._base, "n_forward", getattr(self._base, "calls", 0)))
            self.stats.models_loaded += 1
            self._built.append(self._base)
        return self._base

    def _model_for(self, spec: QuantSpec) -> Any:
        base = self._base_model()
        if spec.is_baseline and not hasattr(base, "to_dtype"):
            return base
        model = quantize(base, spec)
        if model is not base:
            self._built.append(model)
            report = getattr(model, "quant_report", None)
            if isinstance(report, pd.DataFrame) and not report.empty:
                write_quant_report(self.root, spec.label, report)
        return model

    def _fingerprint(self, spec: QuantSpec) -> str:
        if isinstance(self.study.model, str):
            from mlquant.models import model_fingerprint

            return model_fingerprint(self._model_source(), spec)
        return str(self.study.model.fingerprint())

    def _model_signature(self) -> str:
        if isinstance(self.study.model, str):
            src = self._model_source()
            rev = src.revision or (src.file_sha256 or "")[:12] or "main"
            return f"model:{src.model_id}@{rev}"
        sig = getattr(self.study.model, "signature", None)
        return sig() if callable(sig) else f"model:{getattr(self.study.model, 'name', 'model')}"

    # ----- cells ----------------------------------------------------------------------------------------------------
    def run(self) -> None:
        model_sig = self._model_signature()
        for spec in self.study.specs:
            cells = [c for c in self.study.cells if c.quant == spec]
            todo = []
            for cell in cells:
                path = cell_path(self.root, spec.label, cell.task_label, cell.lang.code)
                sig = self.study._signature(cell, model_sig)
                if path.is_file() and _stored_signature(path) == sig:
                    self.stats.cells_skipped += 1
                    continue
                todo.append((cell, path, sig))
            if not todo:
                continue
            model = CachedModel(self._factory(spec), self.cache, fingerprint=self._fingerprint(spec))
            for cell, path, sig in todo:
                self._run_cell(cell, path, sig, model)
            self.stats.requests_computed += model.computed
            self.stats.cache_hits += model.hits
            self._release()

    def _factory(self, spec: QuantSpec) -> Callable[[], Any]:
        return lambda: self._model_for(spec)

    def _release(self) -> None:
        """Count forward passes and free quantized models (the base model is kept for the next spec)."""
        for m in self._built:
            count = int(getattr(m, "n_forward", getattr(m, "calls", 0)))
            self.stats.forward_passes += count - self._seen.get(id(m), 0)
            self._seen[id(m)] = count
        self._built = [self._base] if self._base is not None else []

    def _run_cell(self, cell: Cell, path: Path, sig: str, model: CachedModel) -> None:
        from tqdm.auto import tqdm

        items = cell.task.items(cell.lang, limit=self.study.limit_for(cell), seed=self.study.seed)
        rows: list[dict[str, Any]] = []
        bar = tqdm(total=len(items), desc=cell.describe(), disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), self.chunk_items):
                chunk = items[start : start + self.chunk_items]
                per_item = [cell.task.requests(item, cell.lang) for item in chunk]
                answers = _answer(model, [r for reqs in per_item for r in reqs])
                pos = 0
                for item, reqs in zip(chunk, per_item):
                    scored = cell.task.score(item, cell.lang, answers[pos : pos + len(reqs)])
                    pos += len(reqs)
                    rows.append(_row(cell, item, scored, sig, self._model_signature()))
                bar.update(len(chunk))
        except MlquantError:
            raise
        except Exception as exc:
            self.stats.failed.append(cell.describe())
            raise type(exc)(f"{exc} (in cell {cell.describe()}; finished cells and cached requests are kept)") from exc
        finally:
            bar.close()
        write_cell(path, rows)
        self.stats.cells_computed += 1
        log.info("finished %s (%d items) -> %s", cell.describe(), len(rows), path)

    def close(self) -> None:
        self._release()
        self.cache.close()


def _answer(model: CachedModel, requests: Sequence[Any]) -> list[Any]:
    """Send requests grouped by kind, return answers in the original order."""
    out: list[Any] = [None] * len(requests)
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        by_kind.setdefault(r.kind, []).append(i)
    method = {"loglikelihood": model.loglikelihood, "loglikelihood_rolling": model.loglikelihood_rolling, "generate": model.generate}
    for kind, idxs in by_kind.items():
        for i, a in zip(idxs, method[kind]([requests[i] for i in idxs])):
            out[i] = a
    return out


def _row(cell: Cell, item: Any, scored: Any, sig: str, model_sig: str) -> dict[str, Any]:
    lang, task, spec = cell.lang, cell.task, cell.quant
    return {
        "model": model_sig.removeprefix("model:"),
        "quant": spec.label,
        "method": spec.method,
        "backend": spec.backend,
        "calibration": spec.calibration or "",
        "task": cell.task_label,
        "task_version": task.version,
        "kind": task.kind,
        "metric": task.metric,
        "higher_is_better": bool(task.higher_is_better),
        "difficulty": task.difficulty,
        "lang": lang.code,
        "script": lang.script,
        "resource_class": int(lang.resource_class),
        "family": lang.family,
        "item_id": str(item.id),
        "group": item.group if item.group is not None else "",
        "prompt": scored.prompt,
        "output": scored.output,
        "extracted": scored.extracted,
        "target": scored.target,
        "score": float(scored.score),
        "weight": float(scored.weight),
        "extra": json.dumps(dict(scored.extra), ensure_ascii=False, default=float),
        "signature": sig,
    }


def _stored_signature(path: Path) -> str | None:
    try:
        import pyarrow.parquet as pq

        col = pq.read_table(path, columns=["signature"]).column("signature")
        return str(col[0]) if len(col) else None
    except Exception:  # a damaged file is recomputed
        return None

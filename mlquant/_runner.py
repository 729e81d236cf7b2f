"""The local executor of a study's cells, and the pool of models it builds (private to the package).

:class:`ModelPool` builds the study's base model once and each quantized variant on demand, writes their
quantization reports and counts their forward passes; the runner and the post-hoc commands (``mlquant kl``) share
it. :class:`Runner` takes a plan (cells with their signatures, limits and seeds; no :class:`~mlquant.study.Study`),
and for each quant spec (baselines first) skips the cells whose Parquet file exists with the same signature; for
the rest it sends each chunk of items' requests through a :class:`~mlquant.cache.CachedModel` (the model is built
only on the first cache miss), scores the items, and writes the cell atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlquant._loading import ModelSource, device_kind, resolve_source
from mlquant.cache import CachedModel, RequestCache
from mlquant.cells import Cell, RunStats, Signature
from mlquant.errors import ConfigError, DataError, MlquantError
from mlquant.models import HFModel, load_model, model_fingerprint
from mlquant.quantize import quantize
from mlquant.requests import Model, Request
from mlquant.results import ResultRow, cell_file_signature, cell_path, write_cell, write_quant_report
from mlquant.rundir import set_aside
from mlquant.spec import QuantSpec
from mlquant.tasks import Item, ItemScore

log = logging.getLogger(__name__)


class ModelPool:
    """The models of one study: the base model (loaded once) and quantized variants (built on demand, released).

    Args:
        model: a model name, hub id, folder or ``.gguf`` file, or a :class:`~mlquant.requests.Model` object.
        batch_size: rows per forward pass of a loaded model.
        report_dir: run folder where quantization reports are written (``quant/<label>.parquet``); None: not written.
        device: where a named model is loaded (``cpu`` when None; see :func:`mlquant.models.load_model`). A model
            object stays where it is.
        device_map: accelerate placement of a named model (passed to :func:`~mlquant.models.load_model`).
        dtype: the dtype a named model is loaded in (the study's widest: ``float32`` when any spec computes in it).
        engine: what runs the forward passes: ``hf`` (transformers, here), ``vllm`` (vLLM in its own venv, from the
            transformers model's checkpoint or its dense quantized export) or ``openai`` (an OpenAI-compatible server).
        engine_options: the engine's options: for ``vllm`` the arguments of :class:`~mlquant.engines.vllm.VLLMModel`
            (``python``, ``engine_args``, ...); for ``openai`` ``base_url``, ``models`` (quant label -> the name the
            server serves it under; default: the study's model for its baseline), and the other arguments of
            :class:`~mlquant.engines.openai.OpenAIEngine`.
    """

    def __init__(
        self,
        model: str | Model,
        *,
        batch_size: int = 16,
        report_dir: Path | None = None,
        device: str | None = None,
        device_map: str | Mapping[str, Any] | None = None,
        dtype: str = "float32",
        engine: str = "hf",
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.engine = engine
        self.engine_options = dict(engine_options or {})
        self._engines: list[Any] = []  # engine processes/clients built since the last release
        self.batch_size = batch_size
        self.report_dir = report_dir
        self.device = device
        self.device_map = device_map
        self.dtype = dtype
        self.models_loaded = 0
        self._source: ModelSource | None = None
        self._base: Model | None = None
        self._built: list[Model] = []
        self._seen: dict[int, int] = {}  # forward passes already counted, per model object

    @property
    def cross_cell_requests(self) -> int:
        """Requests sent to the model in one call across the cells of a quant spec (0: cell by cell).

        Engines that batch internally (vLLM's continuous batching, a server's concurrency) gain from whole-study
        batches: ``engine_options["batch_requests"]`` (default 4096 for ``vllm`` and ``openai``, 0 for ``hf``, whose
        batches are ``batch_size`` rows whatever it is sent).
        """
        default = 0 if self.engine == "hf" else 4096
        value = self.engine_options.get("batch_requests", default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"engine_options: batch_requests={value!r} is invalid; expected an integer >= 0.")
        return value

    def source(self) -> ModelSource | None:
        """Where a named model's weights come from (resolved without loading them); None for a model object."""
        if isinstance(self.model, str):
            if self._source is None:
                self._source = resolve_source(self.model)
            return self._source
        return self.model.source if isinstance(self.model, HFModel) else None

    def device_kind(self) -> str:
        """The device type the models run on (``cpu``, ``cuda``, ``mps``), known without loading a named model."""
        if isinstance(self.model, HFModel):
            return str(self.model.device.type)
        if isinstance(self.model, str):
            return device_kind(self.device or "cpu")
        return "cpu"

    def fingerprint(self, spec: QuantSpec) -> str:
        """The fingerprint ``spec``'s model will have (the request cache key), computed without loading it.

        It includes the engine (and vLLM's version), so the cache never answers one engine with another's results.
        """
        if self.engine == "openai":
            return self._openai(spec).fingerprint()
        source = self.source()
        if source is not None and self.engine == "vllm":
            from mlquant.engines.vllm import installed_vllm_version, vllm_fingerprint, vllm_kernel

            version = installed_vllm_version(self.engine_options.get("python"))
            dtype = str(self.engine_options.get("dtype") or spec.dtype)
            kernel = vllm_kernel(spec, str(self.engine_options.get("weights", "dense")))
            return vllm_fingerprint(model_fingerprint(source, spec, "cpu"), version, dtype, kernel)
        if source is not None:
            return model_fingerprint(source, spec, self.device_kind())
        if not isinstance(self.model, str) and spec == self.model.spec:
            return self.model.fingerprint()
        raise ConfigError(f"quant {spec.label}: a scripted model can only run its own spec ({self._spec_label()}).")

    def signature(self) -> str:
        """``model:<id>@<revision>``, the model part of every cell signature."""
        source = self.source()
        if source is not None:
            rev = source.revision or (source.file_sha256 or "")[:12] or "main"
            return f"model:{source.model_id}@{rev}"
        if isinstance(self.model, str):  # unreachable: a named model always has a source
            raise ConfigError(f"model {self.model!r} has no source.")
        return self.model.signature()

    def base(self) -> Model:
        """The unquantized model, loaded on first use."""
        if self._base is None:
            if isinstance(self.model, str):
                self._base = load_model(
                    self.model, batch_size=self.batch_size, device=self.device, device_map=self.device_map,
                    dtype=self.dtype,
                )
            else:
                self._base = self.model
                self._seen[id(self._base)] = self._base.n_forward
            self.models_loaded += 1
            self._built.append(self._base)
        return self._base

    def get(self, spec: QuantSpec) -> Model:
        """The model of ``spec`` run by the pool's engine (see :meth:`get_hf` for the transformers model)."""
        if self.engine == "openai":
            client = self._openai(spec)
            self._engines.append(client)
            return client
        model = self.get_hf(spec)
        if self.engine != "vllm":
            return model
        if not isinstance(model, HFModel):
            raise ConfigError("engine vllm needs a named model (a transformers checkpoint), not a scripted model.")
        from mlquant.engines.vllm import VLLMModel

        options = {k: v for k, v in self.engine_options.items() if k not in ("folder", "batch_requests")}
        engine = VLLMModel.from_hf(model, **options)
        self._engines.append(engine)
        self._built.append(engine)
        return engine

    def _openai(self, spec: QuantSpec) -> Model:
        from mlquant.engines.openai import OpenAIEngine

        options = {k: v for k, v in self.engine_options.items() if k != "batch_requests"}
        base_url = options.pop("base_url", None)
        if not isinstance(base_url, str):
            raise ConfigError("engine openai: engine_options needs base_url (e.g. http://127.0.0.1:8000).")
        served = dict(options.pop("models", None) or {})
        name = served.get(spec.label)
        if name is None and spec.is_baseline and isinstance(self.model, str):
            name = self.model
        if name is None:
            raise ConfigError(
                f"engine openai: no served model for quant {spec.label!r}; map it in engine_options.models "
                "(quant label -> the model name the server serves it under)."
            )
        return OpenAIEngine(base_url, str(name), spec=spec, **options)

    def get_hf(self, spec: QuantSpec) -> Model:
        """The transformers model of ``spec``: the base model itself, in another dtype, or a quantized copy."""
        base = self.base()
        if spec == base.spec:
            return base
        if not isinstance(base, HFModel):
            raise ConfigError(f"quant {spec.label}: a scripted model can only run its own spec ({base.spec.label}).")
        # A quantized spec computes in its own dtype: quantize the base model cast to it (quantize() keeps the
        # input's dtype), then drop the cast copy.
        source = base if spec.is_baseline or spec.dtype == base.spec.dtype else base.to_dtype(spec.dtype)
        model = quantize(source, spec)
        del source
        if model is not base:
            self._built.append(model)
            report = model.quant_report
            if self.report_dir is not None and isinstance(report, pd.DataFrame) and not report.empty:
                write_quant_report(self.report_dir, spec.label, report)
        return model

    def release(self) -> int:
        """Free the quantized models and stop engine workers (the base model is kept); return the forward passes
        (engine calls, for vllm and openai) run since last time."""
        passes = 0
        for m in self._built:
            passes += m.n_forward - self._seen.get(id(m), 0)
            self._seen[id(m)] = m.n_forward
        for engine in self._engines:
            if engine not in self._built:
                passes += int(engine.n_forward)
            close = getattr(engine, "close", None)
            if callable(close):
                close()
        self._engines = []
        self._built = [self._base] if self._base is not None else []
        return passes

    def _spec_label(self) -> str:
        return self.model.spec.label if not isinstance(self.model, str) else "fp32"


@dataclass(frozen=True)
class PlannedCell:
    """A cell as the runner sees it: what to compute, on how many items, under which signature."""

    cell: Cell
    limit: int | None
    seed: int
    signature: Signature


def planned_path(root: Path, planned: PlannedCell) -> Path:
    """The Parquet file of a planned cell in the run folder ``root``."""
    cell = planned.cell
    return cell_path(root, cell.quant.label, cell.task_label, cell.lang.code)


def is_finished(root: Path, planned: PlannedCell) -> bool:
    """Whether the cell's file exists in ``root`` with the planned signature (a finished cell is never recomputed)."""
    path = planned_path(root, planned)
    if not path.is_file():
        return False
    try:
        stored = cell_file_signature(path)
    except DataError as exc:  # truncated or foreign: set aside (kept for inspection) and recompute
        moved = set_aside(path, root, str(exc))
        log.warning("%s; set aside as %s, the cell is recomputed", exc, moved)
        return False
    return stored == planned.signature.format()


def group_by_quant(plan: Sequence[PlannedCell]) -> list[list[PlannedCell]]:
    """The plan split into one group per quant spec (the cells that share a built model), baselines first, each
    group in plan order. The runner runs the groups in this order; the Ray executor sends each group to a worker."""
    groups: dict[str, list[PlannedCell]] = {}
    for p in plan:
        groups.setdefault(p.cell.quant.label, []).append(p)
    return sorted(groups.values(), key=lambda g: not g[0].cell.quant.is_baseline)


class Runner:
    """Runs planned cells into one run directory.

    Args:
        pool: the models.
        plan: the cells to run (the whole study or a subset, e.g. one quant spec's group on a Ray worker).
        root: the run folder the cell files go to.
        progress: one progress bar per cell.
        chunk_items: items whose requests go to the model together (and are committed to the cache together).
        cache_path: the request cache file (default ``root / "cache.sqlite"``).
    """

    def __init__(
        self,
        pool: ModelPool,
        plan: Sequence[PlannedCell],
        root: Path,
        *,
        progress: bool,
        chunk_items: int,
        cache_path: Path | None = None,
    ) -> None:
        self.pool = pool
        self.plan = list(plan)
        self.root = root
        self.progress = progress
        self.chunk_items = chunk_items
        self.cache = RequestCache(cache_path if cache_path is not None else root / "cache.sqlite")
        self.stats = RunStats(cells_total=len(self.plan))
        self._rereads = 0  # cache reads of answers prefetched across cells (not hits)

    def run(self) -> None:
        for group in group_by_quant(self.plan):
            spec = group[0].cell.quant
            todo: list[tuple[PlannedCell, Path, str]] = []
            for planned in group:
                if is_finished(self.root, planned):
                    self.stats.cells_skipped += 1
                    continue
                todo.append((planned, planned_path(self.root, planned), planned.signature.format()))
            if not todo:
                continue
            model = CachedModel(self._factory(spec), self.cache, fingerprint=self.pool.fingerprint(spec))
            try:
                batch = self.pool.cross_cell_requests
                if batch and len(todo) > 1:
                    self._prefetch([planned for planned, _, _ in todo], model, batch)
                for planned, path, sig in todo:
                    self._run_cell(planned, path, sig, model)
            finally:  # counted also when a cell fails: the answers are in the cache
                self.stats.requests_computed += model.computed
                self.stats.cache_hits += max(model.hits - self._rereads, 0)
                self._rereads = 0
            self.stats.forward_passes += self.pool.release()
        self.stats.models_loaded = self.pool.models_loaded

    def _prefetch(self, cells: Sequence[PlannedCell], model: CachedModel, batch: int) -> None:
        """Answer the requests of several cells in calls of ``batch`` requests, each committed to the cache.

        The cells are then scored one by one from the cache, so their files, resumption and results are those of a
        cell-by-cell run; only the engine sees larger batches. The scoring pass's cache reads are not counted as
        hits (they are this run's own answers).
        """
        requests = []
        for planned in cells:
            cell = planned.cell
            for item in cell.task.items(cell.lang, limit=planned.limit, seed=planned.seed):
                requests.extend(cell.task.requests(item, cell.lang))
        for start in range(0, len(requests), batch):
            answer(model, requests[start : start + batch])
        self._rereads = len(requests)

    def _factory(self, spec: QuantSpec) -> Callable[[], Model]:
        return lambda: self.pool.get(spec)

    def _run_cell(self, planned: PlannedCell, path: Path, sig: str, model: CachedModel) -> None:
        from tqdm.auto import tqdm

        cell = planned.cell
        items = cell.task.items(cell.lang, limit=planned.limit, seed=planned.seed)
        model_id = planned.signature.model
        rows: list[ResultRow] = []
        bar = tqdm(total=len(items), desc=cell.describe(), disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), self.chunk_items):
                chunk = items[start : start + self.chunk_items]
                per_item = [cell.task.requests(item, cell.lang) for item in chunk]
                answers = answer(model, [r for reqs in per_item for r in reqs])
                pos = 0
                for item, reqs in zip(chunk, per_item):
                    scored = cell.task.score(item, cell.lang, answers[pos : pos + len(reqs)])
                    pos += len(reqs)
                    rows.append(result_row(cell, item, scored, sig, model_id))
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
        self.stats.forward_passes += self.pool.release()
        self.stats.models_loaded = self.pool.models_loaded
        self.cache.close()


def answer(model: CachedModel, requests: Sequence[Request]) -> list[Any]:
    """Send requests grouped by kind, return answers in the original order."""
    out: list[Any] = [None] * len(requests)
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        by_kind.setdefault(r.kind, []).append(i)
    method: dict[str, Callable[[list[Any]], list[Any]]] = {
        "loglikelihood": model.loglikelihood,
        "loglikelihood_rolling": model.loglikelihood_rolling,
        "generate": model.generate,
    }
    for kind, idxs in by_kind.items():
        for i, a in zip(idxs, method[kind]([requests[i] for i in idxs])):
            out[i] = a
    return out


def result_row(cell: Cell, item: Item, scored: ItemScore, sig: str, model_id: str) -> ResultRow:
    """The tidy row of one scored item of ``cell``."""
    lang, task, spec = cell.lang, cell.task, cell.quant
    return ResultRow(
        model=model_id,
        quant=spec.label,
        method=spec.method,
        backend=spec.backend,
        calibration=spec.calibration or "",
        task=cell.task_label,
        task_version=task.version,
        kind=task.kind,
        metric=task.metric,
        higher_is_better=bool(task.higher_is_better),
        difficulty=task.difficulty,
        lang=lang.code,
        script=lang.script,
        resource_class=int(lang.resource_class),
        family=lang.family,
        item_id=str(item.id),
        group=item.group if item.group is not None else "",
        prompt=scored.prompt,
        output=scored.output,
        extracted=scored.extracted,
        target=scored.target,
        score=float(scored.score),
        weight=float(scored.weight),
        extra=json.dumps(dict(scored.extra), ensure_ascii=False, default=float),
        signature=sig,
    )

"""Study: the grid *base model x quant specs x tasks x languages*, run resumably into a run directory.

Every cell (quant, task, language) is scored on exactly the items of its baseline cell (same sample, same
seed), so every comparison is paired by item. Everything is validated before a model is loaded. A finished
cell is one Parquet file; answered requests are in an SQLite cache keyed by the model fingerprint (with its
quantization); re-running a finished study loads no model and runs no forward pass.

Example:
    >>> import mlquant as mq
    >>> study = mq.Study("gemma3-270m", quant=["fp32", "rtn-w4"], tasks=["xcopa"], languages=["tr", "zh"], limit=20)
    >>> len(study.cells)  # 2 quants x 2 languages; nothing is loaded yet
    4
    >>> results = study.run("runs/example")  # doctest: +SKIP
    >>> df = results.frame  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from mlquant._loading import check_device, check_device_map, device_kind, resolve_device
from mlquant._registry import did_you_mean
from mlquant.cells import Cell, RunStats, Signature, library_versions
from mlquant.data import data_dir
from mlquant.errors import ConfigError
from mlquant.languages import Language, get_language
from mlquant.rundir import RunLock, check_study_file
from mlquant.spec import QuantSpec
from mlquant.tasks import Task, get_task
from mlquant.version import __version__

if TYPE_CHECKING:
    from mlquant._runner import ModelPool
    from mlquant.executors import Executor
    from mlquant.results import Results

__all__ = ["Cell", "RunStats", "Signature", "Study"]

log = logging.getLogger(__name__)

STUDY_KEYS = {
    "model": "model name, hub id, folder or .gguf file (default gemma3-270m)",
    "quant": "list of quant labels or mappings {label: ..., <field or option>: value or list of values}",
    "tasks": "list of task names or mappings {name: ..., label: ..., languages: [...], limit: n, <option>: value}",
    "languages": "list of ISO 639-1 codes, or 'all'",
    "limit": "items per cell (a seeded sample), or null for all",
    "seed": "seed of the item sample and of sampling decoders",
    "batch_size": "rows per forward pass",
    "name": "a name for the study",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:<index> or mps (default cpu)",
    "device_map": "accelerate placement for a model larger than one device: auto, sequential, ... or a mapping",
    "engine": "what runs the model: hf (transformers, default), vllm (make vllm-venv) or openai (a server)",
    "engine_options": "vllm {python, engine_args, dtype, weights: dense|packed}; openai {base_url, models, ...}; "
    "both: batch_requests",
}

#: The engines a study can run on (see mlquant.engines).
STUDY_ENGINES = ("hf", "vllm", "openai")


def _expand_quant(entry: Any, where: str) -> list[QuantSpec]:
    if isinstance(entry, QuantSpec):
        return [entry]
    if isinstance(entry, str):
        try:
            return [QuantSpec.parse(entry)]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if isinstance(entry, Mapping):
        # A list value puts that field on an axis: calibration: [flores:en:128, flores:ja:128] -> two specs.
        keys = list(entry)
        values = [v if isinstance(v, list) else [v] for v in entry.values()]
        return [QuantSpec.from_dict(dict(zip(keys, combo)), where=where) for combo in itertools.product(*values)]
    raise ConfigError(f"{where}: expected a quant label or a mapping with 'label', got {entry!r}.")


_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def _build_task(entry: Any, where: str) -> tuple[Task, list[str] | None, int | None, str]:
    """(task, explicit languages, limit, label) of one ``tasks`` entry."""
    if isinstance(entry, Task):
        return entry, None, None, entry.name
    if isinstance(entry, str):
        return get_task(entry), None, None, entry
    if isinstance(entry, Mapping):
        opts = dict(entry)
        name = opts.pop("name", None)
        if name is None:
            raise ConfigError(f"{where}: missing key 'name' (e.g. name: mgsm).")
        langs = opts.pop("languages", None)
        limit = opts.pop("limit", None)
        label = opts.pop("label", None)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ConfigError(f"{where}: limit={limit!r}; expected a positive integer.")
        if label is not None and (not isinstance(label, str) or not _LABEL_RE.match(label)):
            raise ConfigError(
                f"{where}: label={label!r}; expected letters, digits and _ . : + - (e.g. label: flores-xx-en)."
            )
        try:
            return get_task(str(name), **opts), langs, limit, label or str(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    raise ConfigError(f"{where}: expected a task name or a mapping with 'name', got {entry!r}.")


class Study:
    """A quantization-impact study.

    Args:
        model: ``"gemma3-270m"`` (default), a hub id, a folder, a ``.gguf`` file, or a Model object (baselines only).
        quant: quant labels, mappings (``{"label": "gptq-w4g128", "calibration": ["flores:en:128", ...]}``) or specs.
            The first baseline (``fp32``/``bf16``/``fp16``) is the reference of every comparison.
        tasks: task names, mappings (``{"name": "mgsm", "shots": 2, "languages": ["ja"], "limit": 10}``) or Task
            objects. A task's own ``limit`` overrides the study's.
        languages: codes (or ``"all"``) intersected with each task's languages; a task given explicit ``languages``
            must have every one of them.
        limit: items per cell (a sample fixed by ``seed``), None for all.
        seed: seed of the sample and of sampling decoders.
        batch_size: rows per forward pass.
        device: ``cpu`` (default), ``auto`` (cuda, then mps, then cpu), ``cuda``, ``cuda:<index>`` or ``mps``; the
            form is checked here, the availability when the study runs (before any model loads). A model object
            stays where it is (``device``, if given, must be its device type). A device other than ``cpu`` enters
            the cell signatures (``torch:<version>@cuda``) and the request-cache fingerprints.
        device_map: accelerate placement of a model larger than one device (``auto``, ``sequential``, a mapping);
            ``device`` then defaults to ``auto``.

    Raises:
        ConfigError: any invalid name, option, spec, language or device string, before a model is loaded.
    """

    def __init__(
        self,
        model: Any = "gemma3-270m",
        quant: Sequence[Any] = ("fp32",),
        tasks: Sequence[Any] = ("xcopa",),
        languages: Sequence[str] | str | None = None,
        limit: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        name: str | None = None,
        device: str | None = None,
        device_map: str | Mapping[str, Any] | None = None,
        engine: str = "hf",
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if engine not in STUDY_ENGINES:
            raise ConfigError(
                f"engine={engine!r} is not one of {', '.join(STUDY_ENGINES)}.{did_you_mean(str(engine), STUDY_ENGINES)}"
            )
        if engine_options is not None and not isinstance(engine_options, Mapping):
            raise ConfigError(f"engine_options={engine_options!r}; expected a mapping of the engine's options.")
        if engine == "openai" and not isinstance((engine_options or {}).get("base_url"), str):
            raise ConfigError("engine_options: engine openai needs base_url (e.g. {base_url: http://127.0.0.1:8000}).")
        if engine != "hf" and not isinstance(model, str):
            raise ConfigError(f"engine {engine}: give the model by name or path; a model object runs as it is.")
        self.engine = engine
        self.engine_options = dict(engine_options or {})
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ConfigError(f"study: limit={limit!r}; expected a positive integer or null.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"study: seed={seed!r}; expected an integer.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"study: batch_size={batch_size!r}; expected a positive integer.")
        self.model = model
        self.limit, self.seed, self.batch_size, self.name = limit, seed, batch_size, name
        self.device_map = check_device_map(device_map)
        self.device = self._check_device(model, device, self.device_map)
        self._resolved_device: str | None = None
        self.specs = [s for i, q in enumerate(quant) for s in _expand_quant(q, f"quant[{i}]")]
        if not self.specs:
            raise ConfigError("study: 'quant' is empty.")
        labels = [s.label for s in self.specs]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ConfigError(f"study: quant {dupes[0]!r} is listed twice.")
        if not any(s.is_baseline for s in self.specs):
            raise ConfigError(f"study: quant {labels} has no baseline; add fp32, bf16 or fp16.")
        self.specs.sort(key=lambda s: not s.is_baseline)  # baselines first
        if engine == "vllm":  # a spec vLLM cannot run (that way, or on this machine) fails before any model loads
            from mlquant.engines._vllm_checkpoint import check_packed_runs_here, vllm_kernel

            for spec in self.specs:
                check_packed_runs_here(vllm_kernel(spec, str(self.engine_options.get("weights", "dense"))))
        if not isinstance(model, str) and any(not s.is_baseline for s in self.specs):
            from mlquant.models import HFModel

            if not isinstance(model, HFModel):
                raise ConfigError("study: quantized cells need a transformers model (HFModel), not a scripted model.")
        self.languages = self._parse_languages(languages)
        self.task_limits: dict[str, int] = {}
        built = [_build_task(t, f"tasks[{i}]") for i, t in enumerate(tasks)]
        labels_seen: dict[str, int] = {}
        for i, (_, _, _, label) in enumerate(built):
            if label in labels_seen:
                raise ConfigError(
                    f"tasks[{i}]: task {label!r} is already tasks[{labels_seen[label]}]; give each entry its own "
                    "'label' (e.g. {name: flores, direction: xx-en, label: flores-xx-en}) so that their results "
                    "do not share a name."
                )
            labels_seen[label] = i
        self.cells = self._plan(built)
        self.last_run = RunStats()

    # ----- device -------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_device(model: Any, device: str | None, device_map: Any) -> str:
        """The study's device string, checked for form (a model object: its own device type)."""
        wanted = check_device(device) if device is not None else None
        if isinstance(model, str):
            return wanted or ("auto" if device_map is not None else "cpu")
        if device_map is not None:
            raise ConfigError("device_map: applies to a named model only; a model object is already placed.")
        from mlquant.models import HFModel

        own = str(model.device.type) if isinstance(model, HFModel) else "cpu"
        if wanted is not None and wanted != "auto" and wanted.partition(":")[0] != own:
            raise ConfigError(
                f"device {wanted!r} does not match the model object, which is on {own!r}; move the model "
                "(model.torch_model.to(...)) or leave device unset."
            )
        return own

    def resolved_device(self) -> str:
        """The device this study runs on here (``auto`` resolved once; an explicit device checked to exist).

        Raises:
            BackendUnavailableError: the device is not available on this machine, e.g. ``cuda`` without a GPU.
        """
        if self._resolved_device is None:
            self._resolved_device = self.device if not isinstance(self.model, str) else resolve_device(self.device)
        return self._resolved_device

    def device_kind(self) -> str:
        """The device type of the cell signatures: ``cpu``, ``cuda`` or ``mps`` (``auto`` is resolved here; an
        explicit device is not checked to exist, so a run folder's study.yaml reloads anywhere)."""
        return device_kind(self.resolved_device() if self.device == "auto" else self.device)

    def base_dtype(self) -> str:
        """The dtype the base model is loaded in: the one every spec computes in, else ``float32`` (each other
        dtype is cast from it, as before; a study of bf16 specs only never holds float32 weights)."""
        dtypes = {s.dtype for s in self.specs}
        return dtypes.pop() if len(dtypes) == 1 else "float32"

    # ----- planning -----------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_languages(languages: Sequence[str] | str | None) -> list[Language] | None:
        if languages is None or languages == "all":
            return None
        if isinstance(languages, str):
            languages = [languages]
        return [get_language(code) for code in languages]

    def _plan(self, tasks: Iterable[tuple[Task, list[str] | None, int | None, str]]) -> list[Cell]:
        cells: list[Cell] = []
        for task, explicit, limit, label in tasks:
            if limit is not None:
                self.task_limits[label] = limit
            if explicit is not None:
                langs = [task.check_language(code) for code in explicit]
            else:
                root = data_dir()
                where: Literal["local", "any"] = (
                    "local" if root is not None and (root / task.benchmark).is_dir() else "any"
                )
                have = set(task.languages(where=where))
                wanted = self.languages if self.languages is not None else [get_language(c) for c in sorted(have)]
                langs = [lang for lang in wanted if lang.code in have]
                skipped = [lang.code for lang in wanted if lang.code not in have]
                if skipped:
                    log.info("task %s has no data for %s; those cells are left out", task.name, ", ".join(skipped))
                if not langs:
                    raise ConfigError(
                        f"study: task {task.name!r} has none of the languages "
                        f"{[lang.code for lang in wanted]}; it has: {', '.join(sorted(have))}."
                    )
            custom = "" if label == task.name else label
            cells += [Cell(spec, task, lang, custom) for spec in self.specs for lang in langs]
        return cells

    def limit_for(self, cell: Cell) -> int | None:
        """Items per cell: the task entry's own ``limit`` if the study gave one, else the study's."""
        return self.task_limits.get(cell.task_label, self.limit)

    @property
    def baseline(self) -> QuantSpec:
        return next(s for s in self.specs if s.is_baseline)

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (written to ``study.yaml`` in the run directory)."""
        tasks: dict[str, dict[str, Any]] = {}
        for cell in self.cells:
            label = {"label": cell.task_label} if cell.label else {}
            entry = tasks.setdefault(
                cell.task_label,
                {"name": cell.task.name, **label, **cell.task.options(), "limit": self.limit_for(cell),
                 "languages": []},
            )
            if cell.lang.code not in entry["languages"]:
                entry["languages"].append(cell.lang.code)
        return {
            "name": self.name,
            "model": self.model if isinstance(self.model, str) else getattr(self.model, "name", repr(self.model)),
            "quant": [s.to_dict() for s in self.specs],
            "tasks": list(tasks.values()),
            "limit": self.limit,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": self._resolved_device or self.device,
            "device_map": self.device_map,
            # Only a non-default engine is written, so study.yaml files written before engines existed stay equal.
            **({"engine": self.engine, "engine_options": self.engine_options} if self.engine != "hf" else {}),
        }

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Study:
        """Load a study file; unknown keys and bad values raise ConfigError naming the file, line and key.

        ``overrides`` replace keys of the file (``mlquant run --device cuda`` passes ``device="cuda"``); an error
        in an overridden value names the override instead of a line.

        Example:
            >>> Study.from_yaml("examples/demo.yaml")  # doctest: +SKIP
            >>> Study.from_yaml("examples/demo.yaml", device="auto")  # doctest: +SKIP
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
            node = yaml.compose(text)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the study file: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of study keys ({', '.join(STUDY_KEYS)}).")
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
        for key in raw:
            if key not in STUDY_KEYS:
                raise ConfigError(
                    f"{path}, line {lines.get(key, '?')}: unknown key {key!r}.{did_you_mean(str(key), STUDY_KEYS)}"
                    f" Expected keys: {', '.join(STUDY_KEYS)}."
                )
        for key, value in overrides.items():
            if key not in STUDY_KEYS:
                raise ConfigError(f"{path}: cannot override unknown key {key!r}; expected one of {', '.join(STUDY_KEYS)}.")
            raw[key] = value
        try:
            return cls(**raw)
        except ConfigError as exc:
            # The longest key the message starts with: 'device_map ...' is about device_map, not device.
            starts = [k for k in raw if str(exc).startswith((k, f"study: {k}", f"{k}["))]
            key = max(starts, key=len) if starts else None
            if key in overrides:
                where = f"{path} (overridden {key}={overrides[key]!r})"
            else:
                where = f"{path}, line {lines[key]}" if key in lines else str(path)
            raise ConfigError(f"{where}: {exc}") from exc

    def check_model_config(self) -> None:
        """Check every quant spec against the model's config (group sizes must divide the layers' input features)
        without loading weights; called by :meth:`run` before any model is loaded.

        Raises:
            ConfigError: naming the spec, the group size and the config key it does not divide.
        """
        from mlquant._loading import load_config, resolve_source
        from mlquant.quantize.checks import check_spec_against_config

        grouped = [s for s in self.specs if s.group_size]
        if not grouped or not isinstance(self.model, str):
            return
        config = load_config(resolve_source(self.model))
        if config is not None:
            for spec in grouped:
                check_spec_against_config(spec, config)

    # ----- running --------------------------------------------------------------------------------------------------
    def signature(self, cell: Cell, model_sig: str) -> Signature:
        """The signature of ``cell`` when the model's own signature is ``model_sig`` (``model:<id>@<revision>``).

        A custom task label enters the signature; the default one does not, so older run folders stay valid. So does
        the device: ``torch:<version>@cuda`` (or ``@mps``) on a GPU, plain ``torch:<version>`` on the CPU.
        """
        torch_version, transformers_version = library_versions()
        kind = self.device_kind()
        if kind != "cpu":
            torch_version = f"{torch_version}@{kind}"
        return Signature(
            mlquant=__version__,
            model=model_sig.removeprefix("model:"),
            quant=cell.quant.label,
            backend=cell.quant.backend,
            calib=cell.quant.calibration or "none",
            task=cell.task.signature(),
            label=cell.label,
            lang=cell.lang.code,
            limit=str(self.limit_for(cell)),
            seed=str(self.seed),
            torch=torch_version,
            transformers=transformers_version,
            engine=self.engine_signature(cell.quant),
        )

    def engine_signature(self, spec: QuantSpec) -> str:
        """What produced a cell besides transformers: ``""`` for ``hf``; ``vllm@<version>:<kernel>-<dtype>`` (the
        kernel is ``dense`` when vLLM runs float weights, ``compressed-tensors`` for its W8A8 / FP8 kernels,
        ``compressed-tensors-w4a16`` for packed weight-only ones (``engine_options: {weights: packed}``); see
        :func:`mlquant.engines.vllm.vllm_kernel`); ``openai@<base url>``."""
        if self.engine == "vllm":
            from mlquant.engines.vllm import installed_vllm_version, vllm_kernel

            version = installed_vllm_version(self.engine_options.get("python"))
            kernel = vllm_kernel(spec, str(self.engine_options.get("weights", "dense")))
            return f"vllm@{version}:{kernel}-{self.engine_options.get('dtype') or spec.dtype}"
        if self.engine == "openai":
            return f"openai@{self.engine_options.get('base_url')}"
        return ""

    def model_pool(self, run_dir: str | os.PathLike[str], device: str | None = None) -> ModelPool:
        """The pool of this study's models (on its device, in its base dtype), writing reports into ``run_dir``.

        ``mlquant kl`` uses it to rebuild a finished run's models exactly as the run built them.
        """
        from mlquant._runner import ModelPool

        device = device or self.resolved_device()
        return ModelPool(
            self.model,
            batch_size=self.batch_size,
            report_dir=Path(run_dir),
            device=device if isinstance(self.model, str) else None,
            device_map=self.device_map,
            dtype=self.base_dtype(),
            engine=self.engine,
            engine_options=self.engine_options,
        )

    def run(
        self,
        run_dir: str | os.PathLike[str],
        *,
        progress: bool = True,
        chunk_items: int = 32,
        executor: str | Executor = "local",
        add: bool = False,
    ) -> Results:
        """Run every unfinished cell and return the results of the whole run directory.

        The run folder is locked for the run (a second process refuses, naming the holder); a folder that holds
        another study is refused unless ``add`` extends its ``study.yaml`` with this one (see :mod:`mlquant.rundir`).
        Damaged cell files are set aside under ``.corrupt/`` and recomputed; a damaged request cache is set aside
        and started anew.

        Args:
            run_dir: folder for study.yaml, the cell Parquet files, quantization reports and the request cache.
            progress: show one progress bar per cell (local executor; Ray workers' output is shown by Ray).
            chunk_items: items whose requests go to the model together (and are committed to the cache together).
            executor: ``local`` (here, one cell after the other), ``ray`` (one Ray task per quant spec, see
                :class:`~mlquant.executors.RayExecutor`), or an executor object such as
                ``RayExecutor(address=..., num_gpus=1)``. Both give the same results; either resumes the other's run.
            add: extend a folder that holds a study with other quants, tasks or languages (its ``study.yaml`` then
                records the union); without it such a folder is refused.

        Returns:
            The run's :class:`~mlquant.results.Results` (``.frame`` is the tidy per-item DataFrame).

        Raises:
            ConfigError: an unknown executor, naming it and the choices.
            RunLockedError: another process is running into ``run_dir``.
            StudyMismatchError: ``run_dir`` holds another study (and ``add`` is False).
            BackendUnavailableError: ``ray`` without Ray installed, or a device this machine lacks; before any
                model is loaded.
        """
        from mlquant._runner import PlannedCell
        from mlquant.executors import get_executor
        from mlquant.results import Results

        chosen = get_executor(executor)  # an unknown or uninstalled executor fails before anything is loaded
        if chosen.remote and self.device != "auto" and isinstance(self.model, str):
            device = self.device  # checked where the model loads: on the workers (a head node may have no GPU)
        else:
            device = self.resolved_device()  # an unavailable device fails here, before any model is loaded
        self.check_model_config()
        root = Path(run_dir)
        with RunLock(root):
            resolved = check_study_file(root, self.to_dict(), add=add)
            (root / "study.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
            pool = self.model_pool(root, device)
            model_sig = pool.signature()
            plan = [PlannedCell(c, self.limit_for(c), self.seed, self.signature(c, model_sig)) for c in self.cells]
            self.last_run = RunStats(cells_total=len(plan))
            chosen.run(pool, plan, root, self.last_run, progress=progress, chunk_items=chunk_items)
        return Results.read(root)

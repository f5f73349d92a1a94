"""Per-tenant model registry on MLflow: log, register, promote and load champions."""

from __future__ import annotations

import os

# MLflow 3 sends usage telemetry over the network on import; our machines may have none and
# tenants' training must not phone home. This is the one place library code sets the
# environment, and it must happen before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Every model load downloads its version's artifacts; a progress bar per load is noise in logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import hashlib  # noqa: E402
import hmac  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import mlflow  # noqa: E402
import mlflow.sklearn  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import skops.io  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.protos.databricks_pb2 import (  # noqa: E402
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from models.metrics import calibration_table, uplift_curve  # noqa: E402

__all__ = [
    "ModelVersionInfo",
    "ModelRegistry",
    "UnsafeModelError",
    "registered_name",
    "CHAMPION_ALIAS",
    "SAFE_TYPES",
]

CHAMPION_ALIAS = "champion"

# Models are stored with skops, which rebuilds only the types it is told to trust, instead of
# pickles, which run whatever code the file names. skops trusts scikit-learn's and numpy's own
# types; these are ours and the few others our models hold. The list lives here, in code: the
# MLmodel file's own `skops_trusted_types` is part of the artifact and is never read.
SAFE_TYPES: tuple[str, ...] = (
    "models.anomaly.BotDetector",
    "models.calibration.CalibratedModel",
    "models.propensity.PropensityModel",
    "models.tabular.LogisticTableModel",
    "models.tabular.TableModel",
    "models.uplift.ClassTransformationUplift",
    "models.uplift.TwoModelUplift",
    "models.uplift.UpliftModel",
    "models.uplift.XLearnerUplift",
    # Trees hold node indices that scikit-learn follows without bounds checks: a crafted file
    # could read out of bounds at predict. Their indices are checked after loading (_check_trees).
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils.validation.check_array",
    "functools.partial",
    "numpy.dtype",
)
# The model version tag holding the sha256 of its model.skops, checked before every load.
_DIGEST_TAG = "model_sha256"
_MODEL_FILE = "model.skops"


class UnsafeModelError(Exception):
    """A stored model that pushpilot refuses to load: a pickle, a file whose digest is not the
    one recorded when it was logged, or one naming a type outside ``SAFE_TYPES``."""

_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Metrics where a smaller value is the better model; every other metric is maximised.
_LOWER_IS_BETTER = frozenset({"brier", "log_loss"})
_INPUT_EXAMPLE_ROWS = 5

# mlflow.set_tracking_uri is process-global, so fluent calls are serialised and each one
# sets the URI it needs; two registries in one process then never write into each other.
_FLUENT_LOCK = threading.RLock()


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version of a tenant's model, with the metrics of the run that logged it."""

    tenant_id: str
    kind: str
    version: int
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    is_champion: bool = False


def registered_name(tenant_id: str, kind: str) -> str:
    """MLflow registered-model name of a tenant's model of one kind."""
    if not isinstance(tenant_id, str) or not _TENANT_ID.match(tenant_id):
        raise ValueError(
            f"tenant_id must match {_TENANT_ID.pattern} (lowercase letters, digits, '_', '-'), "
            f"got {tenant_id!r}"
        )
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValueError(
            f"kind must match {_KIND.pattern}, such as 'propensity' or 'bot', got {kind!r}"
        )
    return f"pushpilot.{tenant_id}.{kind}"


def _experiment_name(tenant_id: str) -> str:
    return f"pushpilot.{tenant_id}"


def _is_error(exc: MlflowException, code: int) -> bool:
    return exc.error_code == ErrorCode.Name(code)


# Fewer rows of the hold-out's smaller class than this and the baseline gate is not enforced.
MIN_CLASS_ROWS_FOR_BASELINE_GATE = 50


class ModelRegistry:
    """Models registered per tenant in MLflow, with the alias ``champion`` marking the one
    that serves.

    Each tenant has its own experiment, ``pushpilot.<tenant_id>``, whose artifacts live
    under ``artifact_root / <tenant_id>``, so one tenant's runs can be backed up or removed
    as a whole.
    """

    def __init__(self, tracking_uri: str, artifact_root: Path):
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve()
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def __repr__(self) -> str:
        return f"ModelRegistry(tracking_uri={self.tracking_uri!r})"

    def log_model(
        self,
        tenant_id: str,
        kind: str,
        model: Any,
        *,
        X_example: pd.DataFrame,
        metrics: dict[str, float],
        params: dict[str, Any],
        y_holdout: Any = None,
        p_holdout: Any = None,
        primary_metric: str = "roc_auc",
        force: bool = False,
        champion_score: Callable[[Any], float] | None = None,
        uplift_holdout: tuple[Any, Any, Any] | None = None,
        baseline_score: float | None = None,
    ) -> ModelVersionInfo:
        """Log a fitted model as one run, register it as a new version, and maybe promote it.

        The new version becomes champion when there is none yet, when ``force`` is set, or
        when it beats the current champion on the same hold-out: ``champion_score`` gets the
        champion model and returns its ``primary_metric`` on the hold-out behind
        ``metrics``. Without ``champion_score`` an existing champion is kept, since metrics
        from different hold-outs do not compare; a champion score of NaN (the champion
        cannot score this hold-out) keeps the champion. ``X_example`` must hold only
        pseudonymous features: its first rows are stored as the input example.

        ``y_holdout`` and ``p_holdout`` add ROC, gain and calibration plots to the run;
        ``uplift_holdout``, a tuple ``(y, treatment, uplift)`` of the hold-out, adds a Qini plot.
        ``baseline_score`` is the best simple baseline's ``primary_metric`` on the same hold-out:
        a version that does not reach it is registered but never promoted, not even as the
        first champion, unless ``force`` is set. With ``y_holdout`` holding fewer than
        ``MIN_CLASS_ROWS_FOR_BASELINE_GATE`` rows of a class the comparison is noise (a
        ROC AUC on 13 positives moves by 0.05 from one split to the next): it is recorded in
        the decision, not enforced.
        """
        name = registered_name(tenant_id, kind)
        if primary_metric not in metrics:
            raise ValueError(
                f"primary_metric {primary_metric!r} is not in metrics {sorted(metrics)}; "
                "log it or choose another primary metric"
            )
        if not isinstance(X_example, pd.DataFrame) or X_example.empty:
            raise ValueError("X_example must be a non-empty DataFrame of the model's features")
        example = X_example.head(_INPUT_EXAMPLE_ROWS)
        predict_fn = "predict_proba" if hasattr(model, "predict_proba") else "predict"
        signature = infer_signature(example, getattr(model, predict_fn)(example))
        experiment_id = self._experiment_id(tenant_id)
        tags = {"tenant_id": tenant_id, "kind": kind, "primary_metric": primary_metric}

        with _FLUENT_LOCK:
            self._use_our_uris()
            with mlflow.start_run(experiment_id=experiment_id, run_name=kind, tags=tags) as run:
                mlflow.log_params(params)
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                if y_holdout is not None and p_holdout is not None:
                    _log_plots(np.asarray(y_holdout), np.asarray(p_holdout))
                if uplift_holdout is not None:
                    _log_qini_plot(*(np.asarray(a) for a in uplift_holdout))
                model_info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                    skops_trusted_types=list(SAFE_TYPES),
                    signature=signature,
                    input_example=example,
                    pyfunc_predict_fn=predict_fn,
                    # Inferring requirements starts a subprocess that reloads the model,
                    # seconds per log; loading also needs pushpilot itself, which is not on PyPI.
                    pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                        include_skops=True
                    ),
                    registered_model_name=name,
                )
        version = int(model_info.registered_model_version)
        # The digest goes in the registry's database, apart from the artifact it vouches for:
        # whoever can rewrite the artifact store cannot make a changed model load.
        with tempfile.TemporaryDirectory() as tmp:
            tags[_DIGEST_TAG] = _sha256(self._download_model(name, version, Path(tmp)))
        for key, value in tags.items():
            self._client.set_model_version_tag(name, str(version), key, value)

        gate_note = ""
        if baseline_score is not None and y_holdout is not None:
            smaller_class = int(np.unique(np.asarray(y_holdout), return_counts=True)[1].min())
            if smaller_class < MIN_CLASS_ROWS_FOR_BASELINE_GATE:
                gate_note = (f"; baseline {baseline_score:.6g} not enforced: the hold-out has "
                             f"{smaller_class} rows of its smaller class, fewer than "
                             f"{MIN_CLASS_ROWS_FOR_BASELINE_GATE}")
                baseline_score = None
        is_champion, decision = self._should_promote(
            name, metrics[primary_metric], primary_metric, force, champion_score, baseline_score
        )
        decision += gate_note
        self._client.set_model_version_tag(name, str(version), "promotion", decision)
        if is_champion:
            self._client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
        return ModelVersionInfo(
            tenant_id=tenant_id,
            kind=kind,
            version=version,
            run_id=run.info.run_id,
            metrics={k: float(v) for k, v in metrics.items()},
            is_champion=is_champion,
        )

    def _should_promote(
        self,
        name: str,
        score: float,
        primary_metric: str,
        force: bool,
        champion_score: Callable[[Any], float] | None,
        baseline_score: float | None = None,
    ) -> tuple[bool, str]:
        if baseline_score is not None and not force and not np.isnan(baseline_score):
            lower = primary_metric in _LOWER_IS_BETTER
            if (score > baseline_score) if lower else (score < baseline_score):
                return False, (
                    f"not promoted: {primary_metric} {score:.6g} does not reach the best simple "
                    f"baseline's {baseline_score:.6g} on the same hold-out"
                )
        current = self._champion_version_by_name(name)
        if current is None:
            return True, "promoted: first champion"
        if force:
            return True, f"promoted: forced over champion v{current}"
        if champion_score is None:
            return False, f"kept champion v{current}: no champion_score to compare on"
        try:
            loaded = self._load_version(name, current)
        except UnsafeModelError as e:
            # A champion we will not load (stored as a pickle before models were kept with
            # skops, or altered since) cannot be compared on, nor kept serving.
            return True, f"promoted: champion v{current} is refused at load ({e})"
        champion = champion_score(loaded)
        if primary_metric in _LOWER_IS_BETTER:
            is_better = score < champion
        else:
            is_better = score > champion
        verdict = "promoted" if is_better else f"kept champion v{current}"
        return is_better, (
            f"{verdict}: {primary_metric} {score:.6g} vs champion v{current} {champion:.6g} "
            "on the same hold-out"
        )

    def load_champion(self, tenant_id: str, kind: str = "propensity") -> tuple[Any, int]:
        """The tenant's champion model and its version; LookupError when there is none."""
        name = registered_name(tenant_id, kind)
        version = self._champion_version_by_name(name)
        if version is None:
            raise LookupError(
                f"no champion {kind!r} model for tenant {tenant_id!r}; train one and "
                "register it with ModelRegistry.log_model before scoring"
            )
        return self._load_version(name, version), version

    def champion_version(self, tenant_id: str, kind: str = "propensity") -> int | None:
        return self._champion_version_by_name(registered_name(tenant_id, kind))

    def list_versions(self, tenant_id: str, kind: str) -> list[ModelVersionInfo]:
        """Every registered version of the tenant's model, oldest first."""
        name = registered_name(tenant_id, kind)
        champion = self._champion_version_by_name(name)
        versions = self._client.search_model_versions(filter_string=f"name = '{name}'")
        infos = []
        for mv in versions:
            metrics = self._client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            infos.append(
                ModelVersionInfo(
                    tenant_id=tenant_id,
                    kind=kind,
                    version=int(mv.version),
                    run_id=mv.run_id or "",
                    metrics={k: float(v) for k, v in metrics.items()},
                    is_champion=int(mv.version) == champion,
                )
            )
        return sorted(infos, key=lambda info: info.version)

    def kinds(self, tenant_id: str) -> list[str]:
        """Kinds of model the tenant has registered, sorted."""
        prefix = registered_name(tenant_id, "x")[:-1]
        # '_' is a LIKE wildcard and tenant ids may hold it, so the prefix is re-checked here.
        found = self._client.search_registered_models(filter_string=f"name LIKE '{prefix}%'")
        return sorted(m.name[len(prefix):] for m in found if m.name.startswith(prefix))

    def _model_version(self, tenant_id: str, kind: str, version: int) -> Any:
        """The registry's record of one version; LookupError if it does not exist."""
        try:
            return self._client.get_model_version(registered_name(tenant_id, kind), str(version))
        except MlflowException as e:
            if not _is_error(e, RESOURCE_DOES_NOT_EXIST):
                raise
            raise LookupError(
                f"tenant {tenant_id!r} has no {kind!r} model version {version}; "
                "see list_versions for the registered ones"
            ) from e

    def describe_version(self, tenant_id: str, kind: str, version: int) -> dict[str, Any]:
        """One version's metrics, parameters, tags and promotion decision; LookupError if absent."""
        name = registered_name(tenant_id, kind)
        mv = self._model_version(tenant_id, kind, version)
        run = self._client.get_run(mv.run_id) if mv.run_id else None
        return {
            "tenant": tenant_id,
            "kind": kind,
            "version": int(mv.version),
            "name": name,
            "run_id": mv.run_id or "",
            "is_champion": self._champion_version_by_name(name) == int(mv.version),
            "created_at_ms": int(mv.creation_timestamp or 0),
            "metrics": {k: float(v) for k, v in (run.data.metrics if run else {}).items()},
            "params": dict(run.data.params) if run else {},
            "tags": dict(mv.tags or {}),
        }

    def promote(self, tenant_id: str, kind: str, version: int) -> None:
        """Make ``version`` the champion, whatever its metrics; LookupError if it does not exist."""
        name = registered_name(tenant_id, kind)
        self._model_version(tenant_id, kind, version)
        self._client.set_model_version_tag(name, str(version), "promotion", "promoted: by hand")
        self._client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))

    def _champion_version_by_name(self, name: str) -> int | None:
        # The registered model's alias map, rather than get_model_version_by_alias, whose
        # error for a missing alias differs between the SQL store and a tracking server.
        try:
            registered = self._client.get_registered_model(name)
        except MlflowException as e:
            if not _is_error(e, RESOURCE_DOES_NOT_EXIST):
                raise
            return None
        version = registered.aliases.get(CHAMPION_ALIAS)
        return None if version is None else int(version)

    def _load_version(self, name: str, version: int) -> Any:
        """The model of one version, rebuilt by skops from a file whose digest matches the one
        recorded at logging; UnsafeModelError for a pickle, a changed file or an unknown type."""
        label = f"{name} v{version}"
        recorded = self._client.get_model_version(name, str(version)).tags.get(_DIGEST_TAG)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = self._download_model(name, version, Path(tmp)).parent
            flavor = yaml.safe_load((model_dir / "MLmodel").read_text()).get("flavors", {})
            fmt = flavor.get("sklearn", {}).get("serialization_format")
            if fmt != mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS:
                raise UnsafeModelError(
                    f"{label} is stored as {fmt or 'an unknown format'}, which runs code when "
                    "loaded; pushpilot loads only skops models. Retrain it (pushpilot model "
                    "train) to store a safe version"
                )
            data = (model_dir / _MODEL_FILE).read_bytes()
        if recorded is None:
            raise UnsafeModelError(f"{label} has no recorded digest ({_DIGEST_TAG} tag); "
                                   "retrain it to store a version that can be checked")
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), recorded):
            raise UnsafeModelError(
                f"{label}: {_MODEL_FILE} is not the file that was logged (its sha256 differs "
                "from the registry's); refusing to load a changed model artifact"
            )
        try:
            untrusted = skops.io.get_untrusted_types(data=data)
        except Exception as e:  # a file skops cannot even parse is as refused as a changed one
            raise UnsafeModelError(f"{label}: {_MODEL_FILE} is not a readable skops file: {e}") from e
        unknown = sorted(set(untrusted) - set(SAFE_TYPES))
        if unknown:
            raise UnsafeModelError(f"{label} names types outside SAFE_TYPES: {', '.join(unknown)}")
        model = skops.io.loads(data, trusted=list(SAFE_TYPES))
        _check_trees(model, None, set(), label)
        return model

    def _download_model(self, name: str, version: int, into: Path) -> Path:
        """A local copy of one version's model directory; returns the path of its model file."""
        import mlflow.artifacts

        with _FLUENT_LOCK:
            self._use_our_uris()
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(into)
            )
        return Path(local) / _MODEL_FILE

    def _experiment_id(self, tenant_id: str) -> str:
        experiment_name = _experiment_name(tenant_id)
        experiment = self._client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (self.artifact_root / tenant_id).as_uri()
        try:
            return str(self._client.create_experiment(experiment_name, location))
        except MlflowException as e:
            if not _is_error(e, RESOURCE_ALREADY_EXISTS):  # another trainer created it first
                raise
            experiment = self._client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _use_our_uris(self) -> None:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)


def _check_trees(obj: Any, n_features: int | None, seen: set[int], label: str) -> None:
    """Refuse a loaded model whose trees point outside themselves or their input.

    skops rebuilds a tree's arrays as stored; scikit-learn's predict then follows node and
    feature indices without bounds checks, so an out-of-range one would read or crash outside
    the arrays, and a child that points back up would loop forever. Trees are built parents
    first, so every child's index is above its parent's. ``n_features`` is the input width of
    the nearest enclosing estimator; a tree under none that names one is refused.
    """
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
        return
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return
    seen.add(id(obj))
    if isinstance(obj, TreePredictor):
        nodes = obj.nodes
        index = np.flatnonzero(nodes["is_leaf"] == 0)
        inner = nodes[index]
        n_bitsets = len(obj.raw_left_cat_bitsets)
        is_bad = (
            n_features is None
            or np.any((inner["left"] <= index) | (inner["left"] >= len(nodes)))
            or np.any((inner["right"] <= index) | (inner["right"] >= len(nodes)))
            or np.any((inner["feature_idx"] < 0) | (inner["feature_idx"] >= n_features))
            or np.any(inner["is_categorical"].astype(bool) & (inner["bitset_idx"] >= n_bitsets))
        )
    elif isinstance(obj, Tree):
        count = obj.node_count
        arrays = (obj.children_left, obj.children_right, obj.feature, obj.threshold, obj.value)
        index = np.flatnonzero(obj.children_left != -1)
        left, right, feature = (a[index] for a in arrays[:3])
        is_bad = (
            any(len(a) != count for a in arrays)
            or np.any((left <= index) | (left >= count))
            or np.any((right <= index) | (right >= count))
            or np.any((feature < 0) | (feature >= obj.n_features))
            or (n_features is not None and obj.n_features != n_features)
        )
    else:
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple, np.ndarray)):  # object arrays: a forest's trees
            children = list(obj.flat) if isinstance(obj, np.ndarray) else list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
            width = getattr(obj, "n_features_in_", None)
            n_features = int(width) if isinstance(width, (int, np.integer)) else n_features
        for child in children:
            _check_trees(child, n_features, seen, label)
        return
    if is_bad:
        raise UnsafeModelError(f"{label} holds a tree whose node or feature indices are out of "
                               "range; refusing to predict with it")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_plots(y: np.ndarray[Any, Any], p: np.ndarray[Any, Any]) -> None:
    """Log ROC and calibration plots of the hold-out to the active run, if matplotlib exists."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib comes with the test and notebook extras only
        return
    from sklearn.metrics import roc_curve

    scores = p[:, -1] if p.ndim == 2 else p
    fpr, tpr, _ = roc_curve(y, scores)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    mlflow.log_figure(fig, "plots/roc.png")

    order = np.argsort(-scores, kind="stable")
    targeted = np.arange(1, len(order) + 1) / len(order)
    captured = np.cumsum(y[order]) / max(int(y.sum()), 1)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(targeted, captured, label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="share of users targeted", ylabel="share of responders reached", title="Gain")
    ax.legend(loc="lower right")
    mlflow.log_figure(fig, "plots/gain.png")

    table = calibration_table(y, scores)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(table["mean_predicted"], table["observed_rate"], marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    mlflow.log_figure(fig, "plots/calibration.png")


def _log_qini_plot(
    y: np.ndarray[Any, Any], treatment: np.ndarray[Any, Any], uplift: np.ndarray[Any, Any]
) -> None:
    """Log the hold-out's Qini curve against random targeting to the active run."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    curve = uplift_curve(y, treatment, uplift)
    fraction = np.r_[0.0, curve["fraction"].to_numpy()]
    qini = np.r_[0.0, curve["qini"].to_numpy()] / max(int(curve["n_treated"].iloc[-1]), 1)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(fraction, qini, label="model")
    ax.plot([0, 1], [0, qini[-1]], linestyle="--", color="grey", label="random")
    ax.set(xlabel="share of users targeted", ylabel="incremental responses per treated user",
           title="Qini")
    ax.legend(loc="upper left")
    mlflow.log_figure(fig, "plots/qini.png")

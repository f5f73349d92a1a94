"""Behaviour of the per-tenant MLflow registry, on a real SQLite MLflow store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as skops_io

from models.anomaly import BotDetector
from models.metrics import roc_auc
from models.propensity import PropensityModel
from models.registry import (
    SAFE_TYPES,
    ModelRegistry,
    ModelVersionInfo,
    UnsafeModelError,
    registered_name,
)


def _features(seed: int, n_users: int = 600) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "sessions_7d": rng.poisson(3, n_users).astype(float),
            "days_since_last_event": rng.exponential(10, n_users),
        }
    )
    logit = -1.5 + 0.7 * X["sessions_7d"] - 0.2 * X["days_since_last_event"]
    y = (rng.random(n_users) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    X, y = _features(seed=0)
    return {"train": (X.iloc[:400], y[:400]), "holdout": (X.iloc[400:], y[400:])}


@pytest.fixture(scope="module")
def good_model(data) -> PropensityModel:
    return PropensityModel(max_iter=50, random_state=0, n_threads=1).fit(*data["train"])


@pytest.fixture(scope="module")
def bad_model(data) -> PropensityModel:
    X, y = data["train"]
    shuffled = np.random.default_rng(9).permutation(y)  # labels unrelated to the features
    return PropensityModel(max_iter=50, random_state=0, n_threads=1).fit(X, shuffled)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def registry(store) -> ModelRegistry:
    return ModelRegistry(f"sqlite:///{store}/mlflow.db", store / "artifacts")


def _log(registry, tenant_id, model, data, **kwargs) -> ModelVersionInfo:
    X, y = data["holdout"]
    p = model.predict_proba(X)[:, 1]
    return registry.log_model(
        tenant_id,
        "propensity",
        model,
        X_example=X,
        metrics={"roc_auc": roc_auc(y, p)},
        params=model.get_params(),
        y_holdout=y,
        p_holdout=p,
        champion_score=lambda champion: roc_auc(y, champion.predict_proba(X)[:, 1]),
        **kwargs,
    )


def test_registered_name_is_per_tenant_and_kind():
    assert registered_name("shop-1", "propensity") == "pushpilot.shop-1.propensity"
    with pytest.raises(ValueError, match="tenant_id"):
        registered_name("Shop:1", "propensity")


def test_first_version_becomes_champion_and_a_worse_one_does_not(
    registry, data, good_model, bad_model
):
    first = _log(registry, "acme", good_model, data)
    challenger = _log(registry, "acme", bad_model, data)

    assert first.is_champion and first.version == 1
    assert not challenger.is_champion and challenger.version == 2
    assert registry.champion_version("acme") == 1
    versions = registry.list_versions("acme", "propensity")
    assert [(v.version, v.is_champion) for v in versions] == [(1, True), (2, False)]
    assert versions[0].metrics["roc_auc"] > versions[1].metrics["roc_auc"]


def test_a_better_challenger_is_promoted(registry, data, good_model, bad_model):
    _log(registry, "better", bad_model, data)

    challenger = _log(registry, "better", good_model, data)

    assert challenger.is_champion
    assert registry.champion_version("better") == challenger.version


def _log_gated(registry, tenant_id, model, data, baseline, rows=None, **kwargs):
    """Log with a baseline; with ``rows``, also the first ``rows`` held-out labels and scores."""
    X, y = data["holdout"]
    p = model.predict_proba(X)[:, 1]
    return registry.log_model(
        tenant_id, "propensity", model, X_example=X, metrics={"roc_auc": roc_auc(y, p)}, params={},
        y_holdout=None if rows is None else y[:rows], p_holdout=None if rows is None else p[:rows],
        baseline_score=baseline, **kwargs,
    )


def test_a_challenger_below_the_best_baseline_is_registered_but_not_promoted(
    registry, data, good_model
):
    X, y = data["holdout"]
    score = roc_auc(y, good_model.predict_proba(X)[:, 1])

    # Not even as the first champion: a tenant would rather have none than a worse one.
    below = _log_gated(registry, "gated", good_model, data, score + 0.01)
    assert below.version == 1 and not below.is_champion
    assert registry.champion_version("gated") is None
    decision = registry.describe_version("gated", "propensity", 1)["tags"]["promotion"]
    assert decision.startswith("not promoted") and "baseline" in decision

    level = _log_gated(registry, "gated", good_model, data, score)
    assert level.is_champion and registry.champion_version("gated") == 2
    forced = _log_gated(registry, "gated-forced", good_model, data, score + 0.5, force=True)
    assert forced.is_champion


def test_a_hold_out_too_small_to_tell_records_the_baseline_but_does_not_enforce_it(
    registry, data, good_model
):
    _, y = data["holdout"]
    assert np.bincount(y[:80]).min() < 50
    small = _log_gated(registry, "small-holdout", good_model, data, 0.999, rows=80)
    assert small.is_champion
    decision = registry.describe_version("small-holdout", "propensity", 1)["tags"]["promotion"]
    assert "not enforced" in decision and "fewer than 50" in decision


def test_force_and_promote_override_the_comparison(registry, data, good_model, bad_model):
    _log(registry, "forced", good_model, data)

    forced = _log(registry, "forced", bad_model, data, force=True)
    assert forced.is_champion and registry.champion_version("forced") == forced.version

    registry.promote("forced", "propensity", 1)
    assert registry.champion_version("forced") == 1
    with pytest.raises(LookupError, match="no 'propensity' model version 99"):
        registry.promote("forced", "propensity", 99)


def test_load_champion_returns_a_model_that_predicts(registry, data, good_model):
    logged = _log(registry, "loads", good_model, data)
    X, _ = data["holdout"]

    model, version = registry.load_champion("loads")

    assert version == logged.version
    np.testing.assert_allclose(model.predict_proba(X), good_model.predict_proba(X))


def test_tenants_never_see_each_others_models(registry, data, good_model, bad_model):
    _log(registry, "tenant-a", good_model, data)

    assert registry.champion_version("tenant-b") is None
    with pytest.raises(LookupError, match="no champion 'propensity' model for tenant 'tenant-b'"):
        registry.load_champion("tenant-b")

    b = _log(registry, "tenant-b", bad_model, data)
    assert b.is_champion  # B's first model, whatever A's champion scores
    X, _ = data["holdout"]
    model_b, _ = registry.load_champion("tenant-b")
    np.testing.assert_allclose(model_b.predict_proba(X), bad_model.predict_proba(X))
    assert [v.version for v in registry.list_versions("tenant-a", "propensity")] == [1]


def test_artifacts_land_under_the_artifact_root_not_the_working_directory(
    registry, store, data, good_model, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)

    info = _log(registry, "files", good_model, data)

    assert not (tmp_path / "mlruns").exists()
    assert list(tmp_path.iterdir()) == []
    tenant_files = {p.name for p in (store / "artifacts" / "files").rglob("*") if p.is_file()}
    assert {"MLmodel", "model.skops", "roc.png", "calibration.png"} <= tenant_files
    assert info.run_id


def test_each_kind_has_its_own_champion(registry, data, good_model):
    X, _ = data["train"]
    detector = BotDetector(n_estimators=20, random_state=0).fit(X)
    _log(registry, "kinds", good_model, data)

    bot = registry.log_model(
        "kinds",
        "bot",
        detector,
        X_example=X,
        metrics={"flagged_share": 0.02},
        params=detector.get_params(),
        primary_metric="flagged_share",
    )

    assert bot.is_champion
    assert registry.champion_version("kinds", "propensity") == 1
    loaded, version = registry.load_champion("kinds", "bot")
    assert version == 1
    np.testing.assert_array_equal(loaded.predict(X), detector.predict(X))


class _RunsCodeWhenLoaded:
    """What an attacker plants in a model file: rebuilding it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _model_file(store: Path, tenant_id: str) -> Path:
    (found,) = (store / "artifacts" / tenant_id).rglob("model.skops")
    return found


def test_a_changed_model_file_is_refused_at_load(registry, store, data, good_model, bad_model):
    _log(registry, "tampered", good_model, data)
    path = _model_file(store, "tampered")
    registry.load_champion("tampered")  # the untouched file loads

    # Someone with write access to the artifact store swaps in another valid model.
    path.write_bytes(skops_io.dumps(bad_model))

    with pytest.raises(UnsafeModelError, match="not the file that was logged"):
        registry.load_champion("tampered")


def test_a_model_file_naming_an_unknown_type_is_refused_even_with_a_matching_digest(
    registry, store, data, good_model, tmp_path
):
    info = _log(registry, "planted", good_model, data)
    marker = tmp_path / "code-ran"
    path = _model_file(store, "planted")
    path.write_bytes(skops_io.dumps(_RunsCodeWhenLoaded(str(marker))))
    # The attacker can write the registry's database too, and records the new file's digest.
    registry._client.set_model_version_tag(
        "pushpilot.planted.propensity", str(info.version), "model_sha256",
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )

    with pytest.raises(UnsafeModelError, match="outside SAFE_TYPES: .*_RunsCodeWhenLoaded"):
        registry.load_champion("planted")
    assert not marker.exists()


def test_a_pickled_model_is_refused_without_being_unpickled(registry, store, data, tmp_path,
                                                             good_model):
    """A version stored as a pickle (by an older pushpilot, or planted) never runs at load."""
    import mlflow
    import mlflow.sklearn

    marker = tmp_path / "pickle-ran"
    X, _ = data["holdout"]
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    experiment = mlflow.create_experiment("pickled", (store / "artifacts" / "pickled").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            _RunsCodeWhenLoaded(str(marker)), name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            registered_model_name="pushpilot.pickled.propensity",
        )
    registry.promote("pickled", "propensity", 1)
    marker.unlink(missing_ok=True)  # MLflow itself reloads what it has just pickled

    with pytest.raises(UnsafeModelError, match="stored as cloudpickle, which runs code"):
        registry.load_champion("pickled")
    assert not marker.exists()

    # Retraining replaces such a champion (there is nothing to compare with) and says why.
    retrained = _log(registry, "pickled", good_model, data)
    assert retrained.is_champion and not marker.exists()
    note = registry._client.get_model_version("pushpilot.pickled.propensity",
                                              str(retrained.version)).tags["promotion"]
    assert note.startswith("promoted: champion v1 is refused at load")
    assert registry.load_champion("pickled")[1] == retrained.version


def test_every_kind_of_model_we_train_is_stored_with_types_from_the_allow_list(data, good_model):
    """A model type added to models/ without its entry in SAFE_TYPES fails here, not at log."""
    from models.calibration import CalibratedModel, fit_calibrator
    from models.tabular import LogisticTableModel, TableModel
    from models.uplift import LEARNERS, UpliftModel

    X, y = data["train"]
    X = X.assign(segment=np.where(X["sessions_7d"] > 3, "busy", "quiet"))
    treated = np.random.default_rng(1).integers(0, 2, len(X))
    table = LogisticTableModel().fit(X, y)
    fitted = [
        good_model,
        BotDetector(n_estimators=10, random_state=0).fit(data["train"][0]),
        TableModel(max_iter=20).fit(X, y),
        LogisticTableModel().fit(X, y),
        CalibratedModel(table, "isotonic", fit_calibrator("isotonic", table.predict_proba(X)[:, 1], y)),
        UpliftModel(learners=LEARNERS, cv_folds=2).fit(X, y, treated),
    ]
    for model in fitted:
        untrusted = set(skops_io.get_untrusted_types(data=skops_io.dumps(model)))
        assert untrusted <= set(SAFE_TYPES), (type(model).__name__, untrusted - set(SAFE_TYPES))


def test_a_tree_pointing_outside_itself_is_refused_even_with_a_matching_digest(
    registry, store, data, good_model
):
    """Trusted types, crafted values: a node index past the tree would be read out of bounds."""
    info = _log(registry, "crafted-tree", good_model, data)
    crafted = skops_io.loads(skops_io.dumps(good_model), trusted=list(SAFE_TYPES))
    predictors = [p for stage in crafted.model_._predictors for p in stage]
    (root,) = np.flatnonzero(predictors[0].nodes["is_leaf"] == 0)[:1]
    predictors[0].nodes["left"][root] = 10**6
    path = _model_file(store, "crafted-tree")
    path.write_bytes(skops_io.dumps(crafted))
    registry._client.set_model_version_tag(
        "pushpilot.crafted-tree.propensity", str(info.version), "model_sha256",
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )

    with pytest.raises(UnsafeModelError, match="node or feature indices are out of range"):
        registry.load_champion("crafted-tree")


def _small_fit(kind: str) -> object:
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = (HistGradientBoostingClassifier(max_iter=3) if kind == "hist"
             else GradientBoostingClassifier(n_estimators=3))
    return model.fit(X, y)


def _hist_root(model: object) -> tuple[np.ndarray, int]:
    nodes = model._predictors[0][0].nodes  # type: ignore[attr-defined]
    return nodes, int(np.flatnonzero(nodes["is_leaf"] == 0)[0])


def _cycle(model: object) -> None:
    nodes, root = _hist_root(model)
    nodes["left"][root] = root  # predict would loop on the root forever


def _negative_feature(model: object) -> None:
    nodes, root = _hist_root(model)
    nodes["feature_idx"][root] = -3


def _no_width(model: object) -> None:
    del model.n_features_in_  # type: ignore[attr-defined]  # nothing to bound feature_idx by


def _forest_tree_past_its_end(model: object) -> None:
    tree = model.estimators_[1, 0].tree_  # type: ignore[attr-defined]  # an object array
    tree.children_right[0] = tree.node_count + 5


@pytest.mark.parametrize(("kind", "craft"), [
    ("hist", _cycle), ("hist", _negative_feature), ("hist", _no_width),
    ("forest", _forest_tree_past_its_end),
])
def test_crafted_tree_values_are_refused_wherever_the_tree_sits(kind, craft) -> None:
    from models.registry import _check_trees

    model = _small_fit(kind)
    _check_trees(skops_io.loads(skops_io.dumps(model), trusted=list(SAFE_TYPES) + [
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting."
        "HistGradientBoostingClassifier"]), None, set(), "the untouched model")  # passes
    craft(model)
    with pytest.raises(UnsafeModelError, match="node or feature indices are out of range"):
        _check_trees(model, None, set(), "a crafted model")

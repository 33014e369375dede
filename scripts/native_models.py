"""The demo models in their frameworks' own formats, for the worker's MLServer runtime.

For each, under the output directory:
  <name>/1/<file>       the model as its framework saves it
  <name>/testset.json   the held-out test split ("inputs", FP64 rows), the framework's own
                        predictions on it ("predictions", what MLServer's "predict" output
                        returns) and their datatype

  wine-sklearn/1/model.joblib          scikit-learn random forest (joblib), class labels
  diabetes-xgboost/1/model.json        XGBoost regressor (JSON), disease progression
  diabetes-xgboost/1/model.ubj         the same booster in UBJSON, XGBoost's binary format
  breast-cancer-lightgbm/1/model.txt   LightGBM binary booster (text), probabilities
  raises-sklearn/1/model.joblib        a pipeline that loads but raises on every predict

Seeded like the ONNX demo models, so reruns give the same models.
"""

import json

import joblib
import lightgbm as lgb
import numpy as np
import xgboost as xgb
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer


def _split(loader, seed, stratify=True):
    X, y = loader(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y if stratify else None)


def _write(out, name, filename, save, X_test, predictions, datatype):
    version_dir = out / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    save(str(version_dir / filename))
    testset = {
        "features": int(X_test.shape[1]),
        "inputs": X_test.tolist(),
        "predictions": np.asarray(predictions).tolist(),
        "datatype": datatype,
    }
    (out / name / "testset.json").write_text(json.dumps(testset))
    print(f"{name}: {len(X_test)} test rows, {filename}")


def export_all(out, seed):
    X_train, X_test, y_train, _ = _split(datasets.load_wine, seed)
    forest = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=seed).fit(X_train, y_train)
    _write(out, "wine-sklearn", "model.joblib", lambda p: joblib.dump(forest, p), X_test, forest.predict(X_test), "INT64")

    X_train, X_test, y_train, _ = _split(datasets.load_diabetes, seed, stratify=False)
    booster = xgb.XGBRegressor(n_estimators=40, max_depth=3, random_state=seed).fit(X_train, y_train)
    _write(out, "diabetes-xgboost", "model.json", booster.save_model, X_test, booster.predict(X_test), "FP32")
    booster.save_model(str(out / "diabetes-xgboost" / "1" / "model.ubj"))

    X_train, X_test, y_train, _ = _split(datasets.load_breast_cancer, seed)
    params = {"objective": "binary", "num_leaves": 15, "seed": seed, "verbose": -1, "deterministic": True, "num_threads": 1}
    gbm = lgb.train(params, lgb.Dataset(X_train, y_train), num_boost_round=30)
    _write(out, "breast-cancer-lightgbm", "model.txt", gbm.save_model, X_test, gbm.predict(X_test), "FP64")

    # Loads (a fitted pipeline), then fails in its first step on every request: int() of an
    # array. Stands for a model whose code raises at predict time.
    X_train, X_test, y_train, _ = _split(datasets.load_iris, seed)
    raises = Pipeline([("boom", FunctionTransformer(int)), ("clf", LogisticRegression(max_iter=1000).fit(X_train, y_train))])
    version_dir = out / "raises-sklearn" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(raises, version_dir / "model.joblib")
    print("raises-sklearn: raises TypeError on predict")

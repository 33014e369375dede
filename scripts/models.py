"""Train the demo models on scikit-learn's bundled data sets and export them to ONNX.

For each data set this writes, under --out:
  <name>/1/model.onnx   the classifier, inputs "input" FP32 [N, features],
                        outputs "label" INT64 [N] and "probabilities" FP32 [N, classes]
  <name>/testset.json   the held-out test split and scikit-learn's own accuracy on it
  breast-cancer/2/model.onnx   a second version (logistic regression) for canary splits

and synthetic models of chosen sizes (for memory and eviction tests):
  synthetic-<mb>mb/1/model.onnx   Y = X @ W with W an FP32 constant of about <mb> MiB
and a model slow enough to saturate one replica (for replica scaling):
  slow/1/model.onnx   64 chained 256 x 256 matrix products per request
  slow/expected.json  its output for an input of ones, computed by NumPy
and the models in scikit-learn's, XGBoost's and LightGBM's own formats that native_models.py
writes, for the MLServer runtime.

Everything is seeded, so reruns give the same models.
"""

import argparse
import json
import pathlib

import native_models
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 7

# Second versions of a model, for canary splits: (data set, version) -> estimator factory.
SECOND_VERSIONS = {
    "breast-cancer": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
}

# name -> (loader, estimator factory)
DATASETS = {
    "iris": (datasets.load_iris, lambda: LogisticRegression(max_iter=1000)),
    "digits": (datasets.load_digits, lambda: RandomForestClassifier(n_estimators=40, max_depth=12, random_state=SEED)),
    "breast-cancer": (
        datasets.load_breast_cancer,
        lambda: make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=30, max_depth=8, random_state=SEED)),
    ),
}


def export_classifier(name, loader, factory, out, version="1"):
    X, y = loader(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=SEED, stratify=y)
    model = factory().fit(X_train, y_train)
    accuracy = float((model.predict(X_test) == y_test).mean())

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
        # Probabilities as a plain tensor, not a sequence of maps.
        options={id(model): {"zipmap": False}} if not hasattr(model, "steps") else {id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    renames = {"output_label": "label", "output_probability": "probabilities"}
    for node in onx.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
    for o in onx.graph.output:
        o.name = renames.get(o.name, o.name)
    onnx.checker.check_model(onx)

    version_dir = out / name / version
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(onx.SerializeToString())
    if version != "1":
        print(f"{name} v{version}: scikit-learn accuracy {accuracy:.4f}")
        return
    testset = {
        "features": X.shape[1],
        "classes": int(len(np.unique(y))),
        "inputs": X_test.tolist(),
        "labels": y_test.astype(int).tolist(),
        "sklearn_accuracy": accuracy,
    }
    (out / name / "testset.json").write_text(json.dumps(testset))
    print(f"{name}: {len(y_test)} test rows, scikit-learn accuracy {accuracy:.4f}")


def export_synthetic(mib, out):
    cols = max(1, (mib << 20) // (4 * 64))
    rng = np.random.default_rng(SEED + mib)
    weights = rng.standard_normal((64, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["product"]), helper.make_node("ReduceSum", ["product"], ["output"], keepdims=1)],
        f"synthetic_{mib}mb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weights, "W")],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    onnx.checker.check_model(onx)
    version_dir = out / f"synthetic-{mib}mb" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(onx.SerializeToString())
    print(f"synthetic-{mib}mb: {weights.nbytes} bytes of weights")


SLOW_STEPS = 64


def export_slow(out):
    """A model whose every request costs tens of milliseconds of one core: X [N, 64] is
    projected to A [N, 256], the outer product A Aᵀ [N, 256, 256] is multiplied SLOW_STEPS
    times by a fixed 256 x 256 matrix (tanh between), and summed. The work depends on the
    input, so ONNX Runtime cannot fold it at load."""
    rng = np.random.default_rng(SEED + 2000)
    w0 = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    r = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "W0"], ["a"]),
        helper.make_node("Unsqueeze", ["a", "last"], ["col"]),
        helper.make_node("Unsqueeze", ["a", "middle"], ["row"]),
        helper.make_node("MatMul", ["col", "row"], ["y0"]),
    ]
    for i in range(SLOW_STEPS):
        nodes.append(helper.make_node("MatMul", [f"y{i}", "R"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"y{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"y{SLOW_STEPS}"], ["output"], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1])],
        [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(r, "R"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "last"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "middle")],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    onnx.checker.check_model(onx)
    version_dir = out / "slow" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(onx.SerializeToString())
    a = np.ones((1, 64), dtype=np.float32) @ w0
    y = a[:, :, None] @ a[:, None, :]
    for _ in range(SLOW_STEPS):
        y = np.tanh(y @ r)
    (out / "slow" / "expected.json").write_text(json.dumps({"input": "ones [1, 64]", "output": float(y.sum())}))
    print(f"slow: {SLOW_STEPS} steps of 256 x 256 products per request")


def export_external(out):
    """A 1 MiB synthetic model whose weights are ONNX external data: model.onnx names
    weights.bin beside it, as large models are stored. Its output for an input of ones is the
    sum of every weight."""
    rng = np.random.default_rng(SEED + 1000)
    weights = rng.standard_normal((64, 4096), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["product"]), helper.make_node("ReduceSum", ["product"], ["output"], keepdims=1)],
        "external_data",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weights, "W")],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    onnx.checker.check_model(onx)
    version_dir = out / "external-data" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    # ONNX appends external data to an existing file: a rerun into the same directory must
    # start from none, or weights.bin doubles while model.onnx reads its first half.
    (version_dir / "weights.bin").unlink(missing_ok=True)
    onnx.save_model(onx, str(version_dir / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    print(f"external-data: {weights.nbytes} bytes of weights in weights.bin")


def export_scalar_output(out):
    """A model with a rank-0 output, which the worker's ONNX Runtime binding cannot return: the
    worker refuses to load it (its tests check the reason)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["output"], keepdims=0)],
        "scalar_output",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [])],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    onnx.checker.check_model(onx)
    version_dir = out / "scalar-output" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(onx.SerializeToString())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--synthetic-mb", default="16,32", help="comma-separated sizes in MiB")
    args = parser.parse_args()
    for name, (loader, factory) in DATASETS.items():
        export_classifier(name, loader, factory, args.out)
    for name, factory in SECOND_VERSIONS.items():
        export_classifier(name, DATASETS[name][0], factory, args.out, version="2")
    for mib in filter(None, args.synthetic_mb.split(",")):
        export_synthetic(int(mib), args.out)
    export_external(args.out)
    export_scalar_output(args.out)
    export_slow(args.out)
    native_models.export_all(args.out, SEED)


if __name__ == "__main__":
    main()

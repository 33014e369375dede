"""Send one inference request through the mesh with tritonclient, a stock KServe v2 client.

    .venv/bin/python scripts/infer.py --url localhost:8080 iris 5.1 3.5 1.4 0.2
    .venv/bin/python scripts/infer.py --protocol http --url localhost:8080 iris 5.1 3.5 1.4 0.2

No mesh-specific header is sent: the gateway finds the model in the request itself.
"""

import argparse

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8080")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--version", default="")
    parser.add_argument("model")
    parser.add_argument("features", nargs="+", type=float)
    args = parser.parse_args()
    if args.protocol == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    c = client.InferenceServerClient(url=args.url)
    data = np.array([args.features], dtype=np.float32)
    inp = client.InferInput("input", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)  # over REST: Triton's binary tensor extension
    outputs = [client.InferRequestedOutput("label"), client.InferRequestedOutput("probabilities")]
    if args.protocol == "http":
        outputs = [client.InferRequestedOutput(o.name(), binary_data=False) for o in outputs]
    result = c.infer(args.model, [inp], model_version=args.version, outputs=outputs)
    response = result.get_response()
    version = response.model_version if args.protocol == "grpc" else response.get("model_version")
    print(f"model {args.model} version {version}: label {result.as_numpy('label')[0]}, probabilities {result.as_numpy('probabilities')[0]}")


if __name__ == "__main__":
    main()

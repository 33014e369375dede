"""Send one inference request through the mesh with tritonclient, a stock KServe v2 client.

    .venv/bin/python scripts/infer.py --url localhost:8080 iris 5.1 3.5 1.4 0.2
    .venv/bin/python scripts/infer.py --protocol http --url localhost:8080 iris 5.1 3.5 1.4 0.2
    .venv/bin/python scripts/infer.py --input input-0 --datatype FP64 --outputs predict \
        wine-sklearn 13.2 1.8 2.1 17 101 2.6 2.7 0.3 1.9 5.4 1.0 3.1 1200

The defaults fit the ONNX demo models; the other flags fit a model of another runtime (the
MLServer demo models read one FP64 input and answer "predict").

No mesh-specific header is sent: the gateway finds the model in the request itself.
"""

import argparse

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8080")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--version", default="")
    parser.add_argument("--input", default="input", help="the input tensor's name")
    parser.add_argument("--datatype", default="FP32", choices=["FP32", "FP64"])
    parser.add_argument("--outputs", default="label,probabilities", help="comma-separated outputs to ask for and print")
    parser.add_argument("--json-tensors", action="store_true", help="over REST, send the input as JSON, not as a binary tensor (for servers without Triton's binary tensor extension, such as MLServer)")
    parser.add_argument("model")
    parser.add_argument("features", nargs="+", type=float)
    args = parser.parse_args()
    if args.protocol == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    c = client.InferenceServerClient(url=args.url)
    data = np.array([args.features], dtype=np.float32 if args.datatype == "FP32" else np.float64)
    inp = client.InferInput(args.input, list(data.shape), args.datatype)
    names = args.outputs.split(",")
    if args.protocol == "grpc":
        inp.set_data_from_numpy(data)
        outputs = [client.InferRequestedOutput(n) for n in names]
    else:
        inp.set_data_from_numpy(data, binary_data=not args.json_tensors)  # binary: Triton's tensor extension
        outputs = [client.InferRequestedOutput(n, binary_data=False) for n in names]
    result = c.infer(args.model, [inp], model_version=args.version, outputs=outputs)
    response = result.get_response()
    version = response.model_version if args.protocol == "grpc" else response.get("model_version")
    values = ", ".join(f"{n} {result.as_numpy(n).reshape(-1)[0] if n != 'probabilities' else result.as_numpy(n)[0]}" for n in names)
    print(f"model {args.model} version {version}: {values}")


if __name__ == "__main__":
    main()

"""Check InferenceService manifests against KServe's own generated SDK models (kserve 0.21).

Run by the KServe validator in a separate interpreter that has the ``kserve`` SDK (it pins
protobuf>=6.33, which the tritongen environment cannot take). Imports nothing from tritongen.
Usage: python kserve_check.py FILE...; prints one line per problem and exits 1 if any."""
import re
import sys

import kserve
import kubernetes.client
import yaml

PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "datetime": (str,), "date": (str,),
              "bytes": (str,), "ResourceQuantity": (str, int, float)}


def model_class(name):
    for module in (kserve, kserve.models, kubernetes.client):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(f"no SDK class {name}")


def check(value, type_name, where, problems):
    if type_name == "object":
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            problems.append(f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    inner = re.fullmatch(r"list\[(.+)\]", type_name, re.IGNORECASE)
    if inner:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, inner.group(1), f"{where}[{i}]", problems)
        return
    inner = re.fullmatch(r"dict[(\[]([^,]+), (.+)[)\]]", type_name, re.IGNORECASE)
    if inner:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return
        for key, item in value.items():
            check(item, inner.group(2), f"{where}.{key}", problems)
        return
    cls = model_class(type_name)
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {type_name} mapping, got {type(value).__name__}")
        return
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{where}.{key}: unknown field of {type_name}")
            continue
        check(item, cls.openapi_types[by_json[key]], f"{where}.{key}", problems)
        kwargs[by_json[key]] = item
    try:
        cls(**kwargs)  # the SDK's own required-field checks
    except ValueError as exc:
        problems.append(f"{where}: {exc}")


def main(paths):
    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc.get("apiVersion") != "serving.kserve.io/v1beta1" or doc.get("kind") != "InferenceService":
                    problems.append(f"{path}: not a serving.kserve.io/v1beta1 InferenceService")
                    continue
                check(doc, "V1beta1InferenceService", f"{path}: InferenceService", problems)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

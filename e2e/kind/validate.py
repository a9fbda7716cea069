"""Validates Kubernetes YAML offline, for e2e/kind/check-offline.

Every document of every file given is checked, and none is passed over in silence:
- Kubernetes' own kinds against the OpenAPI schemas that the PyPI package kubernetes-validate
  bundles, strict (an unknown field fails, as `kubectl apply`'s default strict field
  validation would), for each --kubernetes-version;
- ambit.io kinds against the openAPIV3Schema of the CRDs among the files (manifests/crds),
  strict too: unknown fields fail unless the schema preserves them;
- gateway.networking.k8s.io kinds by the Node.js validator given with --gateway-api (the
  schemas of npm's @kubernetes-models/gateway-api); without it they are reported SKIPPED;
- a Kustomization: its resources must exist (they are validated as files of their own);
- a kind cluster config (kind.x-k8s.io/v1alpha4 Cluster, which is not a Kubernetes object and
  has no published schema) against the fields kind documents, below.
Anything else fails. --self-test first checks that broken objects of each kind are refused.
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# kind's v1alpha4 Cluster config: the fields of its documentation, nodes' roles.
KIND_CLUSTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string"},
        "featureGates": {"type": "object"},
        "runtimeConfig": {"type": "object"},
        "networking": {"type": "object"},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array"},
        "containerdConfigPatches": {"type": "array", "items": {"type": "string"}},
        "containerdConfigPatchesJSON6902": {"type": "array"},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role"],
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": {"type": "string"},
                    "labels": {"type": "object"},
                    "extraMounts": {"type": "array"},
                    "extraPortMappings": {"type": "array"},
                    "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
                    "kubeadmConfigPatchesJSON6902": {"type": "array"},
                },
            },
        },
    },
}

# metadata of a custom resource: what the API server requires of any object.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN.pattern},
        "namespace": {"type": "string", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class Report:
    def __init__(self, refusal="FAILED  "):
        self.failures = 0
        self.counts = {}
        self.refusal = refusal

    def ok(self, where, what, how):
        self.counts[how] = self.counts.get(how, 0) + 1
        print(f"ok       {where} {what} ({how})")

    def fail(self, where, what, why):
        self.failures += 1
        print(f"{self.refusal} {where} {what}: {why}")

    def skip(self, where, what, why):
        self.counts["SKIPPED"] = self.counts.get("SKIPPED", 0) + 1
        print(f"SKIPPED  {where} {what}: {why}")


def describe(doc):
    if not isinstance(doc, dict):
        return "(not an object)"
    meta = doc.get("metadata") or {}
    name = f"{meta['namespace']}/{meta.get('name')}" if meta.get("namespace") else meta.get("name")
    return " ".join(str(x) for x in (doc.get("kind", "(no kind)"), name) if x)


def structural_to_jsonschema(schema):
    """A CRD's structural schema as JSON Schema: nullable, int-or-string and preserved unknown
    fields as the API server reads them, and unknown fields refused elsewhere (strict)."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return s
        preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
        if s.pop("x-kubernetes-int-or-string", False):
            s.pop("type", None)
            s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if s.pop("nullable", False) and "type" in s:
            s["type"] = [s["type"], "null"]
        for key in list(s):
            if key.startswith("x-kubernetes-"):
                s.pop(key)
        for key in ("properties", "patternProperties"):
            if key in s:
                s[key] = {k: walk(v) for k, v in s[key].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(s.get(key), dict):
                s[key] = walk(s[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in s:
                s[key] = [walk(v) for v in s[key]]
        if "properties" in s and "additionalProperties" not in s and not preserve:
            s["additionalProperties"] = False
        return s

    return walk(schema)


class Validator:
    def __init__(self, versions, gateway_api, report):
        self.versions = versions
        self.gateway_api = gateway_api
        self.report = report
        self.crds = {}  # (group, version, kind) -> JSON schema
        self.gateway_docs = []  # (where, doc), checked together by Node.js

    def learn_crd(self, doc):
        spec = doc.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
            schema = structural_to_jsonschema(schema)
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"const": f"{group}/{version['name']}"}
            props["kind"] = {"const": kind}
            props["metadata"] = METADATA_SCHEMA
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            self.crds[(group, version["name"], kind)] = schema

    def check(self, where, doc, path):
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            self.report.fail(where, describe(doc), "not an object with apiVersion and kind")
            return
        api_version, kind = doc["apiVersion"], doc["kind"]
        group, _, version = api_version.rpartition("/")
        what = describe(doc)
        if group == "kind.x-k8s.io":
            self.against(where, what, doc, KIND_CLUSTER_SCHEMA, "kind v1alpha4 cluster config, fields of kind's docs")
        elif group == "kustomize.config.k8s.io":
            missing = [r for r in doc.get("resources") or []
                       if not os.path.exists(os.path.join(os.path.dirname(path), r))]
            if missing:
                self.report.fail(where, what, f"resources that do not exist: {missing}")
            else:
                self.report.ok(where, what, "Kustomization: its resources exist")
        elif group == "gateway.networking.k8s.io":
            if self.gateway_api:
                self.gateway_docs.append((where, doc))
            else:
                self.report.skip(where, what, "Gateway API kinds: no schema here (no --gateway-api validator)")
        elif (group, version, kind) in self.crds:
            self.against(where, what, doc, self.crds[(group, version, kind)], f"CRD {kind}.{group} openAPIV3Schema, strict")
        elif "." in group and not group.endswith(".k8s.io"):
            self.report.fail(where, what, f"no CRD for {api_version} {kind} among the files given")
        else:
            for v in self.versions:
                try:
                    got = kubernetes_validate.validate(doc, v, strict=True)
                    self.report.ok(where, what, f"Kubernetes {got} schema, strict")
                except ValidationError as e:
                    at = ".".join(str(p) for p in e.path)
                    self.report.fail(where, what, f"Kubernetes {e.version}: {at}: {e.message}")
                except SchemaNotFoundError as e:
                    self.report.fail(where, what, e.message)

    def against(self, where, what, doc, schema, how):
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            for e in errors[:5]:
                at = ".".join(str(p) for p in e.path) or "(top)"
                self.report.fail(where, what, f"{at}: {e.message}")
        else:
            self.report.ok(where, what, how)

    def check_gateway_api(self):
        if not self.gateway_docs:
            return
        payload = json.dumps([{"where": w, "doc": d} for w, d in self.gateway_docs])
        proc = subprocess.run(self.gateway_api, input=payload, capture_output=True, text=True)
        try:
            results = json.loads(proc.stdout)
        except json.JSONDecodeError:
            self.report.fail("gateway-api", "validator", f"exit {proc.returncode}: {proc.stdout}{proc.stderr}")
            return
        source = results.get("source", "?")
        for (where, doc), result in zip(self.gateway_docs, results["results"]):
            what = describe(doc)
            if result.get("error"):
                self.report.fail(where, what, f"{source}: {result['error']}")
            else:
                self.report.ok(where, what, f"{source}; no unknown-field or CEL checks")
        if len(results["results"]) != len(self.gateway_docs):
            self.report.fail("gateway-api", "validator", "answered for a different number of objects")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def self_test(versions, gateway_api, crd_files):
    """Broken objects of each kind must be refused: proof that the checks above check."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}}},
    }
    policy = {
        "apiVersion": "ambit.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "x", "namespace": "demo"}, "spec": {"action": "PERMIT"},
    }
    traffic = {
        "apiVersion": "ambit.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "x", "namespace": "demo"},
        "spec": {"targetRef": {"group": "", "kind": "Service", "name": "r"}, "outlierDetection": {"bogus": 1}},
    }
    cluster = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [{"role": "master"}]}
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "x"},
        "spec": {"rules": [{"backendRefs": [{"name": "r", "port": "http"}]}]},
    }
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "x"},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": "mesh", "protocol": "HBONE"}]},
    }
    broken = [deployment, policy, traffic, cluster] + ([route, gateway] if gateway_api else [])
    quiet = Report(refusal="refused ")
    v = Validator(versions, gateway_api, quiet)
    for f in crd_files:
        for d in load(f):
            if d.get("kind") == "CustomResourceDefinition":
                v.learn_crd(d)
    print("self-test: each of these broken objects must be refused")
    for i, doc in enumerate(broken):
        before = quiet.failures
        v.check(f"self-test#{i}", doc, ".")
        if doc["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue
        if quiet.failures == before:
            print(f"self-test FAILED: {describe(doc)} ({doc['apiVersion']}) was accepted")
            return False
    if gateway_api:
        before = quiet.failures
        v.check_gateway_api()
        if quiet.failures - before != 2:
            print("self-test FAILED: the Gateway API validator accepted a broken HTTPRoute or Gateway")
            return False
    print("self-test: all refused\n")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubernetes-version", action="append", required=True)
    p.add_argument("--gateway-api", nargs="+", help="command validating Gateway API objects (JSON on stdin)")
    p.add_argument("--self-test", action="store_true")
    p.add_argument("files", nargs="+")
    args = p.parse_args()

    if args.self_test:
        crd_files = [f for f in args.files if "/crds/" in f]
        if not self_test(args.kubernetes_version, args.gateway_api, crd_files):
            return 1

    report = Report()
    v = Validator(args.kubernetes_version, args.gateway_api, report)
    docs = []
    for path in args.files:
        try:
            loaded = load(path)
        except yaml.YAMLError as e:
            report.fail(path, "YAML", str(e))
            continue
        if not loaded:
            report.fail(path, "YAML", "no documents")
        for i, doc in enumerate(loaded):
            docs.append((f"{path}#{i}", doc, path))
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                v.learn_crd(doc)
    for where, doc, path in docs:
        v.check(where, doc, path)
    v.check_gateway_api()
    print("\nchecked:")
    for how, n in sorted(report.counts.items()):
        print(f"  {n:3}  {how}")
    if report.failures:
        print(f"{report.failures} FAILED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

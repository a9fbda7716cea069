// Validates Gateway API objects (gateway.networking.k8s.io) for e2e/kind/validate.py: a JSON
// array of {where, doc} on stdin, {source, results: [{where, error}]} on stdout. The schemas
// are those of npm's @kubernetes-models/gateway-api (generated from the Gateway API's types:
// field types, required fields, enums, patterns and limits). They do not refuse unknown fields,
// and the CRDs' CEL rules are not evaluated; the API server would do both.
// Run with NODE_PATH naming the node_modules that holds the package (check-offline does).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.NODE_PATH;
if (!modules) {
  console.error("NODE_PATH must name the node_modules holding @kubernetes-models/gateway-api");
  process.exit(2);
}
const pkg = "@kubernetes-models/gateway-api";
const { version } = JSON.parse(readFileSync(join(modules, pkg, "package.json"), "utf8"));

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { where, doc } of input) {
  const [group, apiVersion] = String(doc.apiVersion).split("/");
  let error = null;
  try {
    if (group !== "gateway.networking.k8s.io" || !/^v[0-9a-z]+$/.test(apiVersion) || !/^[A-Za-z]+$/.test(doc.kind)) {
      throw new Error(`not a Gateway API kind: ${doc.apiVersion} ${doc.kind}`);
    }
    // The package's own layout (its exports map: ./<group>/<version>/<Kind>.js).
    const file = join(modules, pkg, group, apiVersion, `${doc.kind}.js`);
    if (!existsSync(file)) {
      throw new Error(`${pkg}@${version} has no ${doc.kind} in ${doc.apiVersion}`);
    }
    const Model = (await import(pathToFileURL(file).href))[doc.kind];
    new Model(doc).validate();
  } catch (e) {
    error = String(e.message || e);
  }
  results.push({ where, error });
}
process.stdout.write(
  JSON.stringify({ source: `${pkg}@${version} schemas (Gateway API v1.5 types)`, results }),
);

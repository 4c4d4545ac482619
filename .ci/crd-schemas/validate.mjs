// Validates prometheus-operator manifests (ServiceMonitor, PrometheusRule) against the
// OpenAPI schemas of their CRDs, as packaged by @kubernetes-models/prometheus-operator.
// Usage: node validate.mjs FILE...   (exit 1 on the first invalid or unknown manifest)
import { readFileSync } from "node:fs";
import { load } from "js-yaml";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { PrometheusRule, ServiceMonitor };
let failed = false;
for (const file of process.argv.slice(2)) {
  const manifest = load(readFileSync(file, "utf8"));
  const Kind = kinds[manifest?.kind];
  if (!Kind || manifest.apiVersion !== "monitoring.coreos.com/v1") {
    console.error(`${file}: not a monitoring.coreos.com/v1 ServiceMonitor or PrometheusRule`);
    failed = true;
    continue;
  }
  try {
    new Kind(manifest).validate();
    console.log(`${file}: valid ${manifest.kind}`);
  } catch (error) {
    console.error(`${file}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);

// A long-running Node process with its runtime metrics (event-loop delay, heap, GC) exported by the real
// OpenTelemetry Node SDK to wherever OTEL_EXPORTER_OTLP_METRICS_ENDPOINT points (`vitals run` sets it), for
// the process-tree tests: started by `npm start`, it is the launcher's child.
//
// node server.mjs [--seconds N]
import { parseArgs } from 'node:util';
import { metrics } from '@opentelemetry/api';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { RuntimeNodeInstrumentation } from '@opentelemetry/instrumentation-runtime-node';

const { values: a } = parseArgs({ options: { seconds: { type: 'string', default: '60' } } });
const url = process.env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT;
if (!url) {
  throw new Error('OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is not set: run under `vitals run`');
}
const reader = new PeriodicExportingMetricReader({
  exporter: new OTLPMetricExporter({ url }),
  exportIntervalMillis: 500,
});
const mp = new MeterProvider({ resource: resourceFromAttributes({ 'service.name': 'node-tree' }), readers: [reader] });
metrics.setGlobalMeterProvider(mp);
registerInstrumentations({ instrumentations: [new RuntimeNodeInstrumentation({ monitoringPrecision: 10 })] });

const end = Date.now() + Number(a.seconds) * 1000;
let keep = [];
const timer = setInterval(() => {
  for (let i = 0; i < 5000; i++) keep.push({ i, s: 'x'.repeat(64) });
  if (keep.length > 50000) keep = [];
  if (Date.now() > end) {
    clearInterval(timer);
    mp.shutdown().then(() => process.exit(0));
  }
}, 20);
process.on('SIGTERM', () => mp.shutdown().finally(() => process.exit(0)));

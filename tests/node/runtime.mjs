// A Node process with @opentelemetry/instrumentation-runtime-node exporting to vitals (OTLP/HTTP JSON),
// forced to collect garbage: v8js.gc.duration and the event-loop delay reach vitals.
//
// node --expose-gc runtime.mjs --endpoint http://127.0.0.1:PORT --seconds N
import { parseArgs } from 'node:util';
import { metrics } from '@opentelemetry/api';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { RuntimeNodeInstrumentation } from '@opentelemetry/instrumentation-runtime-node';

const { values: a } = parseArgs({ options: { endpoint: { type: 'string' }, seconds: { type: 'string', default: '3' } } });
const reader = new PeriodicExportingMetricReader({
  exporter: new OTLPMetricExporter({ url: `${a.endpoint}/v1/metrics` }),
  exportIntervalMillis: 500,
});
const mp = new MeterProvider({ resource: resourceFromAttributes({ 'service.name': 'node-runtime' }), readers: [reader] });
metrics.setGlobalMeterProvider(mp);
registerInstrumentations({ instrumentations: [new RuntimeNodeInstrumentation({ monitoringPrecision: 10 })] });

const end = Date.now() + Number(a.seconds) * 1000;
let keep = [];
while (Date.now() < end) {
  for (let i = 0; i < 20000; i++) keep.push({ i, s: 'x'.repeat(64) });
  keep = [];
  global.gc();
  await new Promise((r) => setTimeout(r, 20));
}
await mp.forceFlush();
await mp.shutdown();
process.stdout.write('done');
